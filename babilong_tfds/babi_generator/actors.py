"""One small world where actors move between rooms and handle objects (qa1-3, qa5-13).

The world keeps, for every actor, where it is and which statement put it there, and for
every object, who holds it or where it was dropped, the statements that moved it and the
places it passed through. Each task is a `_Task`: how likely each kind of action is, how
its statements are worded and which questions the world can answer at a given moment
(with the indices of the statements that support the answer). A story alternates two
statements and, when the world can answer one, a question, until it has
`num_questions` questions. Recent events are asked about more often than old ones, as in
the original files (their question-to-support distances are short).

`story(task, rng, num_actors, num_questions, words)` returns the story as a list of
entries: a statement (str) or a question `(question, answer, supporting indices)`; `words`
(a `vocab.Wording`, default bAbI's own) says which verbs the statements use.
"""

from __future__ import annotations

import copy
import random

from babilong_tfds.babi_generator import vocab

Entry = str | tuple[str, str, tuple[int, ...]]
Question = tuple[str, str, tuple[int, ...]]


class _World:
    """The state of one story: positions, holdings and the statements so far."""

    def __init__(
        self,
        rng: random.Random,
        actors,
        places,
        *,
        meet: float = 0.0,
        there_drop: float = 0.2,
        there_pick: float = 1.0,
        one_hand: float = 0.0,
        words: vocab.Wording = vocab.BABI_WORDING,
    ):
        self.rng = rng
        self.words = words
        self.move_verbs, self.n_verbs = words.move, len(words.move)
        self.one_hand = one_hand  # chance that only empty-handed actors pick things up
        self.actors = list(actors)
        self.places = places
        self.n_actors, self.n_places = len(self.actors), len(places)
        self.meet = meet  # chance that a move joins another actor (so gifts can happen)
        self.there_drop = there_drop
        self.there_pick = there_pick
        self.facts: list[str] = []
        self.loc: dict[str, str] = {}
        self.last_move: dict[str, int] = {}
        self.held: dict[str, list[str]] = {a: [] for a in self.actors}
        self.holder: dict[str, str] = {}
        self.dropped_at: dict[str, str] = {}
        self.drop_move: dict[str, int] = {}
        self.obj_event: dict[str, int] = {}
        self.events: dict[str, list[int]] = {a: [] for a in self.actors}
        # object -> [[place, index of the move that brought it there, carry id]]
        self.trail: dict[str, list[list]] = {o: [] for o in vocab.OBJECTS}
        self.carry: dict[str, int] = {}
        self.gives: list[tuple[str, str, str, int]] = []
        self.neg: dict[str, str] = {}  # qa9: actor -> the place it is known not to be in
        self.either: dict[str, tuple[str, str]] = {}  # qa10: actor -> its two places
        self.pair: dict[str, tuple[int, int]] = {}  # qa11, qa13: actor -> its last two moves

    def say(self, text: str) -> int:
        self.facts.append(text)
        return len(self.facts) - 1

    # -- actions: each returns False when the world does not allow it now ----------
    def move(self, actor: str | None = None) -> bool:
        # Indexing by rng.random() rather than rng.choice: this is the hot loop of qa1.
        rand = self.rng.random
        if actor is None:
            actor = self.actors[int(rand() * self.n_actors)]
        loc = self.loc
        here = loc.get(actor)
        place = None
        if self.meet and rand() < self.meet:
            others = [p for a, p in loc.items() if a != actor and p != here]
            if others:
                place = others[int(rand() * len(others))]
        if place is None:
            places, n = self.places, self.n_places
            place = places[int(rand() * n)]
            while place == here:
                place = places[int(rand() * n)]
        facts = self.facts
        facts.append(f"{actor} {self.move_verbs[int(rand() * self.n_verbs)]} to the {place}.")
        i = len(facts) - 1
        loc[actor] = place
        self.last_move[actor] = i
        held = self.held[actor]
        if held:
            for obj in held:
                self.trail[obj].append([place, i, self.carry[obj]])
        return True

    def pick(self) -> bool:
        rng = self.rng
        options = [
            (a, o)
            for a in self.loc
            for o in vocab.OBJECTS
            if o not in self.holder and self.dropped_at.get(o, self.loc[a]) == self.loc[a]
        ]
        if options and rng.random() < self.one_hand:
            options = [(a, o) for a, o in options if not self.held[a]]
        if not options:
            return False
        actor, obj = rng.choice(options)
        there = " there" if rng.random() < self.there_pick else ""
        i = self.say(f"{actor} {rng.choice(self.words.pick)} the {obj}{there}.")
        place = self.loc[actor]
        self.holder[obj] = actor
        self.held[actor].append(obj)
        self.dropped_at.pop(obj, None)
        self.obj_event[obj] = i
        self.events[actor].append(i)
        self.carry[obj] = i
        trail = self.trail[obj]
        if trail and trail[-1][0] == place:
            trail[-1] = [place, self.last_move[actor], i]
        else:
            trail.append([place, self.last_move[actor], i])
        return True

    def drop(self) -> bool:
        rng = self.rng
        options = [(a, o) for a in self.actors for o in self.held[a]]
        if not options:
            return False
        actor, obj = rng.choice(options)
        there = " there" if rng.random() < self.there_drop else ""
        i = self.say(f"{actor} {rng.choice(self.words.drop)} the {obj}{there}.")
        del self.holder[obj]
        self.held[actor].remove(obj)
        self.dropped_at[obj] = self.loc[actor]
        self.drop_move[obj] = self.last_move[actor]
        self.obj_event[obj] = i
        self.events[actor].append(i)
        return True

    def give(self) -> bool:
        rng = self.rng
        options = [
            (a, o, b)
            for a in self.actors
            for o in self.held[a]
            for b in self.loc
            if b != a and self.loc[b] == self.loc[a]
        ]
        if not options:
            return False
        giver, obj, taker = rng.choice(options)
        i = self.say(f"{giver} {rng.choice(self.words.give)} the {obj} to {taker}.")
        self.holder[obj] = taker
        self.held[giver].remove(obj)
        self.held[taker].append(obj)
        self.obj_event[obj] = i
        self.events[giver].append(i)
        self.events[taker].append(i)
        self.carry[obj] = i
        self.gives.append((giver, obj, taker, i))
        return True


# -- questions: each returns the questions the world can answer now ----------------
def _where_actor(w: _World) -> list[Question]:
    return [(f"Where is {a}?", w.loc[a], (w.last_move[a],)) for a in w.loc]


def _is_in(w: _World) -> list[Question]:
    out = []
    for a, here in w.loc.items():
        place = here if w.rng.random() < 0.5 else w.rng.choice([p for p in w.places if p != here])
        out.append((f"Is {a} in the {place}?", "yes" if place == here else "no", (w.last_move[a],)))
    return out


def _where_object(w: _World) -> list[Question]:
    out = []
    for o, i in w.obj_event.items():
        if o in w.holder:
            a = w.holder[o]
            out.append((f"Where is the {o}?", w.loc[a], (i, w.last_move[a])))
        else:
            out.append((f"Where is the {o}?", w.dropped_at[o], (i, w.drop_move[o])))
    return out


def _where_before(w: _World) -> list[Question]:
    out = []
    for o, trail in w.trail.items():
        # Asked only where one carrier took the object through its last two places. The
        # support is what establishes who carried it from where to where: the object's
        # latest event and the carrier's moves into those two places, in the original
        # files' order, then the statement that put the object in the carrier's hands
        # (the pick-up, `w.carry[o]`) unless it is already the latest event. The originals
        # leave the pick-up out, so once the object has been dropped their support no
        # longer says who carried it; it is added here so that the support always
        # suffices. It precedes the move into the last place, so the nearest supporting
        # statement, and with it which question is chosen, is unchanged.
        if len(trail) >= 2 and trail[-1][2] == trail[-2][2] == w.carry[o]:
            support = (w.obj_event[o], trail[-1][1], trail[-2][1])
            if w.carry[o] not in support:
                support += (w.carry[o],)
            out.append((f"Where was the {o} before the {trail[-1][0]}?", trail[-2][0], support))
    return out


def _gifts(w: _World) -> list[Question]:
    # Every question names the latest gift that fits its words, so the answer is unique.
    out = []
    latest: dict[tuple, tuple] = {}
    for g in w.gives:
        giver, obj, taker, _ = g
        for key in (("gt", giver, taker), ("o", obj), ("go", giver, obj), ("ot", obj, taker)):
            latest[key] = g
    rng = w.rng
    for key, (giver, obj, taker, i) in latest.items():
        kind = key[0]
        if kind == "gt":
            out.append((f"What did {giver} give to {taker}?", obj, (i,)))
        elif kind == "o":
            if rng.random() < 0.5:
                out.append((f"Who received the {obj}?", taker, (i,)))
            else:
                out.append((f"Who gave the {obj}?", giver, (i,)))
        elif kind == "go":
            out.append((f"Who did {giver} give the {obj} to?", taker, (i,)))
        else:
            out.append((f"Who gave the {obj} to {taker}?", giver, (i,)))
    # The original asks 'What did X give to Y?' about a third of the time.
    gt = [q for q in out if q[0].startswith("What")]
    if gt and rng.random() < 0.37:
        return gt
    return [q for q in out if not q[0].startswith("What")] or out


def _count(w: _World) -> list[Question]:
    return [
        (f"How many objects is {a} carrying?", vocab.NUMBERS[len(w.held[a])], tuple(ev))
        for a, ev in w.events.items()
        if ev
    ]


def _carrying(w: _World) -> list[Question]:
    return [
        (f"What is {a} carrying?", ",".join(w.held[a]) or "nothing", tuple(ev))
        for a, ev in w.events.items()
        if ev
    ]


class _Task:
    """How one task drives the world: action weights, the question kind, the pacing."""

    def __init__(
        self,
        actors,
        ask,
        *,
        pick=0.0,
        drop=0.0,
        give=0.0,
        recent=0.75,
        ask_old=1.0,
        min_facts=0,
        meet=0.0,
        there_drop=0.2,
        there_pick=1.0,
        one_hand=0.0,
        places=vocab.ROOMS,
    ):
        self.one_hand = one_hand
        self.actors, self.ask, self.places = actors, ask, places
        self.pick, self.drop, self.give = pick, drop, give
        self.recent = recent  # chance to ask about the last two statements when possible
        self.ask_old = ask_old  # chance to ask when nothing new has happened
        self.min_facts = min_facts
        self.meet, self.there_drop, self.there_pick = meet, there_drop, there_pick

    def step(self, w: _World) -> None:
        r = w.rng.random()
        if r < self.give and w.give():
            return
        r -= self.give
        if r < self.pick and w.pick():
            return
        r -= self.pick
        if r < self.drop and w.drop():
            return
        w.move()


def _choose(w: _World, task: _Task, cands: list[Question]) -> Question | None:
    if not cands or len(w.facts) < task.min_facts:
        return None
    rand = w.rng.random
    cutoff = len(w.facts) - 2
    recent = [c for c in cands if max(c[2]) >= cutoff]
    if recent and rand() < task.recent:
        return recent[int(rand() * len(recent))]
    if not recent and rand() >= task.ask_old:
        return None
    return cands[int(rand() * len(cands))]


def _run(
    task: _Task, rng: random.Random, num_actors: int, num_questions: int, step=None,
    words: vocab.Wording = vocab.BABI_WORDING,
) -> list[Entry]:
    w = _World(
        rng,
        rng.sample(task.actors, num_actors),
        task.places,
        meet=task.meet,
        there_drop=task.there_drop,
        there_pick=task.there_pick,
        one_hand=task.one_hand,
        words=words,
    )
    if step is None:
        moves_only = not (task.pick or task.drop or task.give)
        step = _World.move if moves_only else task.step
    entries: list[Entry] = []
    asked = 0
    while asked < num_questions:
        n = len(w.facts)
        step(w)
        while len(w.facts) < n + 2:
            step(w)
        entries.extend(w.facts[n:])
        q = _choose(w, task, task.ask(w))
        if q is not None:
            entries.append(q)
            asked += 1
    return entries


# -- the task-specific steps ------------------------------------------------------
def _negation_step(w: _World) -> None:
    """qa9: a move, or a plain statement that someone is, or is not, somewhere."""
    rng = w.rng
    r = rng.random()
    if r < 0.49:
        w.move()
        w.neg.pop(w.facts[-1].split()[0], None)
        return
    actor = rng.choice(w.actors)
    place = rng.choice(w.places)
    neg = w.neg
    if r < 0.73:
        while place == w.loc.get(actor):
            place = rng.choice(w.places)
        w.last_move[actor] = w.say(f"{actor} is in the {place}.")
        w.loc[actor] = place
        neg.pop(actor, None)
    else:
        phrase = "no longer" if rng.random() < 0.52 else "not"
        w.last_move[actor] = w.say(f"{actor} is {phrase} in the {place}.")
        w.loc.pop(actor, None)
        neg[actor] = place


def _negation_ask(w: _World) -> list[Question]:
    out = _is_in(w)
    for a, place in w.neg.items():
        out.append((f"Is {a} in the {place}?", "no", (w.last_move[a],)))
    return out


def _either_step(w: _World) -> None:
    """qa10: a move, a plain 'is in', or 'is either in X or Y'."""
    rng = w.rng
    r = rng.random()
    either = w.either
    if r < 0.5:
        w.move()
        either.pop(w.facts[-1].split()[0], None)
        return
    actor = rng.choice(w.actors)
    if r < 0.76:
        place = rng.choice(w.places)
        w.last_move[actor] = w.say(f"{actor} is in the {place}.")
        w.loc[actor] = place
        either.pop(actor, None)
    else:
        a, b = rng.sample(w.places, 2)
        w.last_move[actor] = w.say(f"{actor} is either in the {a} or the {b}.")
        w.loc.pop(actor, None)
        either[actor] = (a, b)


def _either_ask(w: _World) -> list[Question]:
    rng = w.rng
    out = []
    for a, here in w.loc.items():
        place = here if rng.random() < 0.54 else rng.choice([p for p in w.places if p != here])
        out.append((f"Is {a} in the {place}?", "yes" if place == here else "no", (w.last_move[a],)))
    for a, pair in w.either.items():
        if rng.random() < 0.5:
            out.append((f"Is {a} in the {rng.choice(pair)}?", "maybe", (w.last_move[a],)))
        else:
            place = rng.choice([p for p in w.places if p not in pair])
            out.append((f"Is {a} in the {place}?", "no", (w.last_move[a],)))
    return out


def _coref_step(w: _World) -> None:
    """qa11: a move, then a second one told with a pronoun."""
    rng = w.rng
    actor = rng.choice(w.actors)
    w.move(actor)
    first = len(w.facts) - 1
    here = w.loc[actor]
    place = rng.choice([p for p in w.places if p != here])
    i = w.say(
        f"{rng.choice(w.words.follow_ups)} {vocab.PRONOUN[actor]} "
        f"{rng.choice(w.words.move)} to the {place}."
    )
    w.loc[actor] = place
    w.pair[actor] = (first, i)
    w.last_move[actor] = i


def _pair_ask(w: _World) -> list[Question]:
    return [(f"Where is {a}?", w.loc[a], sup) for a, sup in w.pair.items()]


def _together(w: _World, follow_up: bool) -> None:
    rng = w.rng
    a, b = rng.sample(w.actors, 2)
    place = rng.choice(w.places)
    i = w.say(f"{a} and {b} {rng.choice(w.words.move)} to the {place}.")
    w.loc[a] = w.loc[b] = place
    w.last_move[a] = w.last_move[b] = i
    if follow_up:
        place2 = rng.choice([p for p in w.places if p != place])
        j = w.say(
            f"{rng.choice(w.words.follow_ups)} they {rng.choice(w.words.move)} to the {place2}."
        )
        w.loc[a] = w.loc[b] = place2
        pair = w.pair
        pair[a] = pair[b] = (i, j)


TASKS: dict[str, _Task] = {
    "qa1": _Task(vocab.HOUSE_ACTORS, _where_actor, recent=0.6),
    "qa2": _Task(vocab.HOUSE_ACTORS, _where_object, pick=0.2, drop=0.16, recent=0.8,
                 ask_old=0.08),
    "qa3": _Task(vocab.HOUSE_ACTORS, _where_before, pick=0.2, drop=0.2, recent=0.97,
                 ask_old=0.03, there_drop=0.2, there_pick=0.2, min_facts=30),
    "qa5": _Task(vocab.GIVING_ACTORS, _gifts, pick=0.2, drop=0.1, give=0.3, recent=0.95,
                 ask_old=0.03, meet=0.7),
    "qa6": _Task(vocab.HOUSE_ACTORS, _is_in, pick=0.2, drop=0.12, recent=0.55),
    "qa7": _Task(vocab.HOUSE_ACTORS, _count, pick=0.2, drop=0.2, give=0.1, recent=0.7,
                 ask_old=0.4, meet=0.3, one_hand=0.8),
    "qa8": _Task(vocab.HOUSE_ACTORS, _carrying, pick=0.22, drop=0.18, recent=0.7,
                 ask_old=0.6, one_hand=0.6),
    "qa9": _Task(vocab.HOUSE_ACTORS, _negation_ask, recent=0.6),
    "qa10": _Task(vocab.TOWN_ACTORS, _either_ask, recent=0.6, places=vocab.TOWN),
    "qa11": _Task(vocab.HOUSE_ACTORS, _pair_ask, recent=0.55),
    "qa12": _Task(vocab.HOUSE_ACTORS, _where_actor, recent=0.6),
    "qa13": _Task(vocab.HOUSE_ACTORS, _pair_ask, recent=0.9),
}
_STEPS = {
    "qa9": _negation_step,
    "qa10": _either_step,
    "qa11": _coref_step,
    "qa12": lambda w: _together(w, False),
    "qa13": None,
}


def story(task: str, rng: random.Random, num_actors: int, num_questions: int,
          words: vocab.Wording = vocab.BABI_WORDING, recency: float | None = None) -> list[Entry]:
    """`recency`: the chance that a question asks about one of the last two statements
    when one can (None: the task's own, as bAbI's generator has it)."""
    spec = TASKS[task]
    if recency is not None:
        spec = copy.copy(spec)
        spec.recent = recency
    if task == "qa13":  # each round is one 'A and B went ...' with its 'Then they ...'
        step = lambda w: _together(w, True)  # noqa: E731
    else:
        step = _STEPS.get(task)
    return _run(spec, rng, num_actors, num_questions, step=step, words=words)


MAX_ACTORS = {t: len(spec.actors) for t, spec in TASKS.items()}
MIN_ACTORS = {t: 2 if t in ("qa5", "qa7", "qa12", "qa13") else 1 for t in TASKS}
