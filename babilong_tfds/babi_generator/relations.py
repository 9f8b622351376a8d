"""Small worlds of relations between places and things (qa4, qa17, qa18, qa19).

- qa4: three rooms in a row along a compass axis; asks what lies in a direction of one.
- qa17: shapes placed on a plane around one of them; asks yes/no questions about the
  left/right/above/below relation of the two others.
- qa18: containers ordered by size; asks whether one fits in / is bigger than another,
  where two statements chained together answer it.
- qa19: rooms on a grid joined by a tree of passages; asks the directions to go from
  one room to another `path_length` steps away.

Each `*_story(rng, ...)` returns the story as entries: a statement (str) or a question
`(question, answer, supporting indices)`, as `actors.story` does.
"""

from __future__ import annotations

import random

from babilong_tfds.babi_generator import vocab

Entry = str | tuple[str, str, tuple[int, ...]]
_AXES = (("north", "south"), ("east", "west"))


def _relation(rng: random.Random, a: str, b: str, direction: str) -> tuple[str, str, str]:
    """'a is `direction` of b', said either way round: (subject, direction, object)."""
    if rng.random() < 0.5:
        return a, direction, b
    return b, vocab.OPPOSITE[direction], a


def two_arg_story(rng: random.Random, num_questions: int) -> list[Entry]:
    a, b, c = rng.sample(vocab.ROOMS, 3)
    direction = rng.choice(rng.choice(_AXES))  # a is `direction` of b, b of c
    facts = [_relation(rng, a, b, direction), _relation(rng, b, c, direction)]
    rng.shuffle(facts)
    entries: list[Entry] = [f"The {s} is {d} of the {o}." for s, d, o in facts]
    for _ in range(num_questions):
        i = rng.randrange(2)
        s, d, o = facts[i]
        if rng.random() < 0.5:
            s, d, o = o, vocab.OPPOSITE[d], s
        if rng.random() < 0.5:
            entries.append((f"What is {d} of the {o}?", s, (i,)))
        else:
            entries.append((f"What is the {s} {d} of?", o, (i,)))
    return entries


_PLANE = {"above": (0, 1), "below": (0, -1), "to the left of": (-1, 0), "to the right of": (1, 0)}
_PLANE_OPPOSITE = {"above": "below", "below": "above", "to the left of": "to the right of",
                   "to the right of": "to the left of"}


def positional_story(rng: random.Random, num_questions: int) -> list[Entry]:
    hub, b, c = rng.sample(vocab.SHAPES, 3)
    pos = {hub: (0, 0)}
    entries: list[Entry] = []
    mentions = {}
    rels = rng.sample(tuple(_PLANE), 2)  # distinct, so b and c never share a place
    for i, shape in enumerate((b, c)):
        rel = rels[i]
        pos[shape] = _PLANE[rel]
        if rng.random() < 0.5:
            entries.append(f"The {shape} is {rel} the {hub}.")
        else:
            entries.append(f"The {hub} is {_PLANE_OPPOSITE[rel]} the {shape}.")
        mentions[shape] = i
    for _ in range(num_questions):
        x, y = (b, c) if rng.random() < 0.5 else (c, b)
        dx, dy = pos[x][0] - pos[y][0], pos[x][1] - pos[y][1]
        # Only the axes on which the two differ are asked about: on the others neither
        # relation holds and the originals do not ask.
        true_rels = [r for r, (ux, uy) in _PLANE.items() if ux * dx > 0 or uy * dy > 0]
        rel = rng.choice(true_rels)
        answer = "yes"
        if rng.random() < 0.5:
            rel, answer = _PLANE_OPPOSITE[rel], "no"
        entries.append((f"Is the {x} {rel} the {y}?", answer, (mentions[x], mentions[y])))
    return entries


def size_story(rng: random.Random, num_questions: int) -> list[Entry]:
    size = {box: i for i, box in enumerate(rng.sample(vocab.BOXES, len(vocab.BOXES)))}
    boxes = list(vocab.BOXES)
    entries: list[Entry] = []
    bigger: dict[str, dict[str, int]] = {b: {} for b in boxes}  # big -> small -> fact
    while True:
        for _ in range(5):
            x, y = rng.sample(boxes, 2)
            big, small = (x, y) if size[x] > size[y] else (y, x)
            bigger[big].setdefault(small, len(entries))
            if rng.random() < 0.5:
                entries.append(f"The {small} fits inside the {big}.")
            else:
                entries.append(f"The {big} is bigger than the {small}.")
        chains = [(big, small, (bigger[big][mid], bigger[mid][small]))
                  for big in boxes for mid in bigger[big] for small in bigger[mid]]
        if chains:
            break
    for _ in range(num_questions):
        big, small, sup = rng.choice(chains)
        x, y = (big, small) if rng.random() < 0.5 else (small, big)
        if rng.random() < 0.5:
            entries.append((f"Does the {x} fit in the {y}?", "yes" if x == small else "no", sup))
        else:
            entries.append((f"Is the {x} bigger than the {y}?", "yes" if x == big else "no",
                            sup))
    return entries


def path_story(rng: random.Random, path_length: int, num_questions: int) -> list[Entry]:
    rooms = rng.sample(vocab.ROOMS, len(vocab.ROOMS))
    while True:  # a self-avoiding walk of `path_length` steps, then the other rooms
        cell = {rooms[0]: (0, 0)}
        taken = {(0, 0)}
        edges = []  # (room, direction from the previous room, previous room)
        ok = True
        for k in range(1, len(rooms)):
            prev = rooms[k - 1] if k <= path_length else rng.choice(rooms[:k])
            options = [(d, (cell[prev][0] + dx, cell[prev][1] + dy))
                       for d, (dx, dy) in vocab.DIRECTIONS.items()
                       if (cell[prev][0] + dx, cell[prev][1] + dy) not in taken]
            if not options:
                ok = False
                break
            d, xy = rng.choice(options)
            cell[rooms[k]] = xy
            taken.add(xy)
            edges.append((rooms[k], d, prev))
        if ok:
            break
    order = list(range(len(edges)))
    rng.shuffle(order)
    entries: list[Entry] = []
    fact_of = {}
    for i, e in enumerate(order):
        room, d, prev = edges[e]
        s, d2, o = _relation(rng, room, prev, d)
        entries.append(f"The {s} is {d2} of the {o}.")
        fact_of[e] = i
    steps = [(edges[k - 1][1], fact_of[k - 1]) for k in range(1, path_length + 1)]
    for _ in range(num_questions):
        if rng.random() < 0.5:
            start, end, route = rooms[0], rooms[path_length], steps
        else:
            start, end = rooms[path_length], rooms[0]
            route = [(vocab.OPPOSITE[d], f) for d, f in reversed(steps)]
        entries.append((f"How do you go from the {start} to the {end}?",
                        ",".join(d[0] for d, _ in route), tuple(f for _, f in route)))
    return entries
