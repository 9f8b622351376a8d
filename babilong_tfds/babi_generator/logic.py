"""Small worlds for the reasoning tasks about time, kinds and motives (qa14-16, qa20).

- qa14: every actor's day is a list of places by time of day (yesterday, this morning,
  this afternoon, this evening); the story tells them in a loose order and asks where
  someone was before a place.
- qa15: species fear other species, individuals belong to a species; asks what an
  individual fears.
- qa16: individuals of a species share a colour; asks the colour of one whose colour is
  not told.
- qa20: a feeling sends an actor to a place and makes it take an object; asks where it
  will go and why it went or took something.

Each `*_story(rng, ...)` returns the story as entries: a statement (str) or a question
`(question, answer, supporting indices)`, as `actors.story` does.
"""

from __future__ import annotations

import random

from babilong_tfds.babi_generator import vocab

Entry = str | tuple[str, str, tuple[int, ...]]

# qa14: how many of the four times of day an actor's story covers (from yesterday on);
# the originals tell nearly everyone's yesterday and morning, fewer afternoons.
_SLOT_WEIGHTS = (0.12, 0.25, 0.25, 0.38)


def _time_sentence(rng: random.Random, actor: str, place: str, slot: int) -> str:
    verb = rng.choice(vocab.MOVE_VERBS)
    when = vocab.TIMES[slot]
    if rng.random() < 0.5:
        return f"{when[0].upper()}{when[1:]} {actor} {verb} to the {place}."
    return f"{actor} {verb} to the {place} {when}."


def time_story(rng: random.Random, num_actors: int, num_questions: int) -> list[Entry]:
    while True:
        entries = _time_attempt(rng, num_actors, num_questions)
        if entries is not None:
            return entries


def _time_attempt(rng, num_actors, num_questions):
    actors = rng.sample(vocab.TOWN_ACTORS, num_actors)
    queues = []
    for actor in actors:
        k = rng.choices((1, 2, 3, 4), _SLOT_WEIGHTS)[0]
        k = max(k, 2)
        places = [rng.choice(vocab.TOWN)]
        for _ in range(k - 1):
            places.append(rng.choice([p for p in vocab.TOWN if p != places[-1]]))
        slots = list(range(k))
        if rng.random() < 0.5:  # the morning is often told before yesterday
            slots[0], slots[1] = 1, 0
        queues.append([(actor, s, places[s]) for s in slots])
    known: dict[str, dict[int, tuple[str, int]]] = {a: {} for a in actors}
    entries: list[Entry] = []
    n_facts = asked = 0
    while asked < num_questions:
        for _ in range(2):
            live = [q for q in queues if q]
            if not live:
                return None
            actor, slot, place = rng.choice(live).pop(0)
            entries.append(_time_sentence(rng, actor, place, slot))
            known[actor][slot] = (place, n_facts)
            n_facts += 1
        cands = []
        for actor, day in known.items():
            last_at: dict[str, int] = {}
            for slot in sorted(day):
                last_at[day[slot][0]] = slot
            for place, slot in last_at.items():
                if slot - 1 in day:
                    cands.append((f"Where was {actor} before the {place}?", day[slot - 1][0],
                                  (day[slot][1], day[slot - 1][1])))
        if cands:
            recent = [c for c in cands if max(c[2]) >= n_facts - 2]
            pool = recent if recent and rng.random() < 0.6 else cands
            entries.append(rng.choice(pool))
            asked += 1
    return entries


def deduction_story(rng: random.Random, num_actors: int, num_questions: int) -> list[Entry]:
    kinds = list(range(len(vocab.SPECIES)))
    fears = {k: rng.choice([j for j in kinds if j != k]) for k in kinds}
    names = rng.sample(vocab.DEDUCTION_NAMES, num_actors)
    member = {n: rng.choice(kinds) for n in names}
    statements = [("rule", k) for k in kinds] + [("member", n) for n in names]
    rng.shuffle(statements)
    entries: list[Entry] = []
    where: dict = {}
    for i, (kind, what) in enumerate(statements):
        where[(kind, what)] = i
        if kind == "rule":
            plural = vocab.SPECIES[what][1]
            entries.append(f"{plural[0].upper()}{plural[1:]} are afraid of "
                           f"{vocab.SPECIES[fears[what]][1]}.")
        else:
            entries.append(f"{what} is a {vocab.SPECIES[member[what]][0]}.")
    for _ in range(num_questions):
        n = rng.choice(names)
        k = member[n]
        entries.append((f"What is {n.lower()} afraid of?", vocab.SPECIES[fears[k]][0],
                        (where[("member", n)], where[("rule", k)])))
    return entries


def induction_story(rng: random.Random, num_actors: int, num_questions: int) -> list[Entry]:
    names = rng.sample(vocab.INDUCTION_NAMES, num_actors)
    target, others = names[0], names[1:]
    color_of = dict(zip(vocab.ANIMALS, rng.sample(vocab.COLORS, 4), strict=True))
    kind = {n: rng.choice(vocab.ANIMALS) for n in others}
    kind[target] = kind[rng.choice(others)]  # someone shares the target's kind
    # Each other individual is said to be of its kind before its colour is told.
    pending = [[("kind", n), ("color", n)] for n in others] + [[("kind", target)]]
    order = []
    while pending:
        seq = rng.choice(pending)
        order.append(seq.pop(0))
        if not seq:
            pending.remove(seq)
    entries: list[Entry] = []
    at: dict = {}
    for i, (what, n) in enumerate(order):
        at[(what, n)] = i
        entries.append(f"{n} is a {kind[n]}." if what == "kind" else f"{n} is {color_of[kind[n]]}.")
    # As in the originals, the peer last said to be of the kind supports the answer.
    peer = max((n for n in others if kind[n] == kind[target]), key=lambda n: at[("kind", n)])
    for _ in range(num_questions):
        entries.append((f"What color is {target}?", color_of[kind[target]],
                        (at[("kind", target)], at[("kind", peer)], at[("color", peer)])))
    return entries


def motivation_story(rng: random.Random, num_actors: int, num_questions: int) -> list[Entry]:
    """`num_questions` is ignored: every statement is followed by its question."""
    del num_questions
    queues = []
    for actor in rng.sample(vocab.MOTIVATED_ACTORS, num_actors):
        feeling = rng.choice(tuple(vocab.MOTIVES))
        place, obj = vocab.MOTIVES[feeling]
        low = actor.lower()
        seq = [
            (f"{actor} is {feeling}.", f"Where will {low} go?", place),
            (f"{actor} {rng.choice(vocab.MOVE_VERBS)} to the {place}.",
             f"Why did {low} go to the {place}?", feeling),
        ]
        if rng.random() < 0.67:
            seq.append((f"{actor} {rng.choice(vocab.PICK_VERBS)} the {obj} there.",
                        f"Why did {low} get the {obj}?", feeling))
        queues.append(seq)
    entries: list[Entry] = []
    n_facts = 0
    feeling_at: dict[str, int] = {}
    while queues:
        seq = rng.choice(queues)
        statement, question, answer = seq.pop(0)
        if not seq:
            queues.remove(seq)
        actor = statement.split()[0]
        if statement.startswith(f"{actor} is "):
            feeling_at[actor] = n_facts
        entries.append(statement)
        n_facts += 1
        entries.append((question, answer, (feeling_at[actor],)))
    return entries
