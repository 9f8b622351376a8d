"""A rule-based solver of bAbI questions, written apart from the generator.

`solve(task, facts, question) -> str` reads the statements (plain English as in the
original files or the generator's output) and answers the question the way the task
defines it. It keeps its own world state from the sentences alone: it imports nothing of
`babi_generator`, so that agreeing with the generator's answers is evidence that both
read the tasks the same way. Raises ValueError for a sentence or question it cannot read.

Readings where a task leaves room (checked against all original v1.1 files):
- qa3 'Where was the O before the P?': the place the object was in just before it last
  arrived at P.
- qa5: the latest gift that fits the question's words.
- qa8: the objects in the order they were taken ('nothing' when empty).
- qa14 'Where was N before the P?': the latest time of day N was at P, then the place at
  the latest earlier time told.
- qa16: the colour of the individual of the same kind, with a told colour, that was
  last said to be of that kind.
"""

from __future__ import annotations

import re
from collections import deque

from babilong_tfds.tasks import check_task

_DROP = ("dropped", "discarded", "left", "put down", "set down")
_CONNECTORS = re.compile(r"^(?:Then|After that|Afterwards|Following that|Later|Next) ")
_NUMBERS = ("none", "one", "two", "three", "four", "five")
_OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}


def _fail(what: str, text: str) -> ValueError:
    return ValueError(f"cannot read {what}: {text!r}")


class _People:
    """Where people are and what they hold, read sentence by sentence (qa1-13)."""

    def __init__(self):
        self.loc: dict[str, str | None] = {}
        self.state: dict[str, tuple] = {}  # ('in', P) | ('not', P) | ('either', P, Q)
        self.held: dict[str, list[str]] = {}
        self.holder: dict[str, str] = {}
        self.obj_place: dict[str, str | None] = {}
        self.trail: dict[str, list[str]] = {}
        self.gives: list[tuple[str, str, str]] = []
        self.last: list[str] = []

    def _arrive(self, who: str, place: str) -> None:
        self.loc[who] = place
        self.state[who] = ("in", place)
        for obj in self.held.get(who, ()):
            self.trail.setdefault(obj, []).append(place)

    def read(self, s: str) -> None:
        m = re.match(r"^(\w+) is either in the (\w+) or the (\w+)\.$", s)
        if m:
            self.loc[m[1]] = None
            self.state[m[1]] = ("either", m[2], m[3])
            self.last = [m[1]]
            return
        m = re.match(r"^(\w+) is (no longer |not )?in the (\w+)\.$", s)
        if m:
            if m[2]:
                self.loc[m[1]] = None
                self.state[m[1]] = ("not", m[3])
            else:
                self._arrive(m[1], m[3])
            self.last = [m[1]]
            return
        m = re.match(r"^(\w+) [a-z ]+ the (\w+) to ([A-Z]\w+)\.$", s)
        if m:
            giver, obj, taker = m[1], m[2], m[3]
            if obj in self.held.get(giver, ()):
                self.held[giver].remove(obj)
            self.held.setdefault(taker, []).append(obj)
            self.holder[obj] = taker
            self.gives.append((giver, obj, taker))
            self.last = [giver]
            return
        m = re.match(r"^(.+?) [a-z ]+ to the (\w+)\.$", s)
        if m:
            subject = m[1]
            if _CONNECTORS.match(s):
                who = self.last
            else:
                who = subject.split(" and ")
            for w in who:
                self._arrive(w, m[2])
            self.last = who
            return
        m = re.match(r"^(\w+) ([a-z ]+?) the (\w+)( there)?\.$", s)
        if m is None:
            raise _fail("statement", s)
        who, verb, obj = m[1], m[2], m[3]
        held = self.held.setdefault(who, [])
        if verb in _DROP:
            if obj in held:
                held.remove(obj)
            self.holder.pop(obj, None)
            self.obj_place[obj] = self.loc.get(who)
        else:
            old = self.holder.get(obj)
            if old is not None and obj in self.held.get(old, ()):
                self.held[old].remove(obj)
            held.append(obj)
            self.holder[obj] = who
            place = self.loc.get(who)
            trail = self.trail.setdefault(obj, [])
            if place is not None and (not trail or trail[-1] != place):
                trail.append(place)
        self.last = [who]

    def answer(self, q: str) -> str:
        m = re.match(r"^Where is the (\w+)\?$", q)
        if m:
            obj = m[1]
            if obj in self.holder:
                return self.loc[self.holder[obj]]
            return self.obj_place[obj]
        m = re.match(r"^Where is (\w+)\?$", q)
        if m:
            return self.loc[m[1]]
        m = re.match(r"^Where was the (\w+) before the (\w+)\?$", q)
        if m:
            trail = self.trail[m[1]]
            last = max(i for i, p in enumerate(trail) if p == m[2])
            return trail[last - 1]
        m = re.match(r"^Is (\w+) in the (\w+)\?$", q)
        if m:
            st = self.state[m[1]]
            if st[0] == "in":
                return "yes" if st[1] == m[2] else "no"
            if st[0] == "either":
                return "maybe" if m[2] in st[1:] else "no"
            if st[1] == m[2]:
                return "no"
            raise _fail("question (only where someone is not is known)", q)
        m = re.match(r"^How many objects is (\w+) carrying\?$", q)
        if m:
            return _NUMBERS[len(self.held.get(m[1], ()))]
        m = re.match(r"^What is (\w+) carrying\?$", q)
        if m:
            return ",".join(self.held.get(m[1], ())) or "nothing"
        return self._gift(q)

    def _gift(self, q: str) -> str:
        patterns = (
            (r"^What did (\w+) give to (\w+)\?$", lambda g, m: (g[0], g[2]) == (m[1], m[2]), 1),
            (r"^Who received the (\w+)\?$", lambda g, m: g[1] == m[1], 2),
            (r"^Who gave the (\w+)\?$", lambda g, m: g[1] == m[1], 0),
            (r"^Who did (\w+) give the (\w+) to\?$", lambda g, m: (g[0], g[1]) == (m[1], m[2]), 2),
            (r"^Who gave the (\w+) to (\w+)\?$", lambda g, m: (g[1], g[2]) == (m[1], m[2]), 0),
        )
        for pattern, fits, field in patterns:
            m = re.match(pattern, q)
            if m:
                for g in reversed(self.gives):
                    if fits(g, m):
                        return g[field]
                raise _fail("question (no such gift told)", q)
        raise _fail("question", q)


def _people(facts, question):
    world = _People()
    for s in facts:
        world.read(s)
    return world.answer(question)


_TIMES = ("yesterday", "this morning", "this afternoon", "this evening")


def _time(facts, question):
    day: dict[str, dict[int, str]] = {}
    for s in facts:
        m = re.match(r"^(?:(Yesterday|This morning|This afternoon|This evening) )?(\w+) [a-z ]+ "
                     r"to the (\w+)(?: (yesterday|this morning|this afternoon|this evening))?\.$",
                     s)
        if m is None or not (m[1] or m[4]):
            raise _fail("statement", s)
        slot = _TIMES.index((m[1] or m[4]).lower())
        day.setdefault(m[2], {})[slot] = m[3]
    m = re.match(r"^Where was (\w+) before the (\w+)\?$", question)
    if m is None:
        raise _fail("question", question)
    known = day[m[1]]
    at = max(t for t, p in known.items() if p == m[2])
    return known[max(t for t in known if t < at)]


def _singular(word: str) -> str:
    return {"mice": "mouse", "wolves": "wolf", "sheep": "sheep"}.get(word, word.rstrip("s"))


def _deduction(facts, question):
    fears, kind = {}, {}
    for s in facts:
        m = re.match(r"^(\w+) are afraid of (\w+)\.$", s)
        if m:
            fears[_singular(m[1].lower())] = _singular(m[2])
            continue
        m = re.match(r"^(\w+) is an? (\w+)\.$", s)
        if m is None:
            raise _fail("statement", s)
        kind[m[1].lower()] = m[2]
    m = re.match(r"^What is (\w+) afraid of\?$", question)
    if m is None:
        raise _fail("question", question)
    return fears[kind[m[1].lower()]]


def _induction(facts, question):
    kind, color = {}, {}
    kind_at = {}
    for i, s in enumerate(facts):
        m = re.match(r"^(\w+) is an? (\w+)\.$", s)
        if m:
            kind[m[1]] = m[2]
            kind_at[m[1]] = i
            continue
        m = re.match(r"^(\w+) is (\w+)\.$", s)
        if m is None:
            raise _fail("statement", s)
        color[m[1]] = m[2]
    m = re.match(r"^What color is (\w+)\?$", question)
    if m is None:
        raise _fail("question", question)
    k = kind[m[1]]
    peers = [who for who in color if who != m[1] and kind.get(who) == k]
    if not peers:
        raise _fail("question (no one of the same kind has a colour)", question)
    return color[max(peers, key=kind_at.__getitem__)]


def _compass(facts):
    """'The X is D of the Y.' -> {(X, Y): D} in both directions."""
    rel = {}
    for s in facts:
        m = re.match(r"^The (\w+) is (north|south|east|west) of the (\w+)\.$", s)
        if m is None:
            raise _fail("statement", s)
        rel[(m[1], m[3])] = m[2]
        rel[(m[3], m[1])] = _OPPOSITE[m[2]]
    return rel


def _two_arg(facts, question):
    rel = _compass(facts)
    m = re.match(r"^What is (north|south|east|west) of the (\w+)\?$", question)
    if m:
        return next(x for (x, y), d in rel.items() if y == m[2] and d == m[1])
    m = re.match(r"^What is the (\w+) (north|south|east|west) of\?$", question)
    if m:
        return next(y for (x, y), d in rel.items() if x == m[1] and d == m[2])
    raise _fail("question", question)


def _path(facts, question):
    rel = _compass(facts)
    m = re.match(r"^How do you go from the (\w+) to the (\w+)\?$", question)
    if m is None:
        raise _fail("question", question)
    start, end = m[1], m[2]
    # Breadth-first search: moving from y to x goes in the direction x lies of y.
    back = {start: None}
    todo = deque([start])
    while todo:
        y = todo.popleft()
        for (x, y2), d in rel.items():
            if y2 == y and x not in back:
                back[x] = (y, d)
                todo.append(x)
    steps = []
    node = end
    while back[node] is not None:
        node, d = back[node]
        steps.append(d[0])
    return ",".join(reversed(steps))


_PLANE = {"above": (0, 1), "below": (0, -1), "to the left of": (-1, 0), "to the right of": (1, 0)}
_PLANE_RE = "(above|below|to the left of|to the right of)"


def _positional(facts, question):
    offsets = []
    for s in facts:
        m = re.match(rf"^The (.+?) is {_PLANE_RE} the (.+)\.$", s)
        if m is None:
            raise _fail("statement", s)
        offsets.append((m[1], _PLANE[m[2]], m[3]))
    pos = {offsets[0][2]: (0, 0)}
    changed = True
    while changed:
        changed = False
        for a, (dx, dy), b in offsets:
            if b in pos and a not in pos:
                pos[a] = (pos[b][0] + dx, pos[b][1] + dy)
                changed = True
            elif a in pos and b not in pos:
                pos[b] = (pos[a][0] - dx, pos[a][1] - dy)
                changed = True
    m = re.match(rf"^Is the (.+?) {_PLANE_RE} the (.+)\?$", question)
    if m is None:
        raise _fail("question", question)
    (x1, y1), (ux, uy), (x2, y2) = pos[m[1]], _PLANE[m[2]], pos[m[3]]
    return "yes" if (x1 - x2) * ux + (y1 - y2) * uy > 0 else "no"


def _size(facts, question):
    bigger: dict[str, set[str]] = {}
    for s in facts:
        m = re.match(r"^The (.+) fits inside the (.+)\.$", s)
        if m:
            bigger.setdefault(m[2], set()).add(m[1])
            continue
        m = re.match(r"^The (.+) is bigger than the (.+)\.$", s)
        if m is None:
            raise _fail("statement", s)
        bigger.setdefault(m[1], set()).add(m[2])

    def reaches(a, b):
        seen, todo = {a}, [a]
        while todo:
            for c in bigger.get(todo.pop(), ()):
                if c == b:
                    return True
                if c not in seen:
                    seen.add(c)
                    todo.append(c)
        return False

    m = re.match(r"^Does the (.+) fit in the (.+)\?$", question)
    if m:
        small, big = m[1], m[2]
    else:
        m = re.match(r"^Is the (.+) bigger than the (.+)\?$", question)
        if m is None:
            raise _fail("question", question)
        big, small = m[1], m[2]
    if reaches(big, small):
        return "yes"
    if reaches(small, big):
        return "no"
    raise _fail("question (the sizes are not related)", question)


_GOES = {"hungry": "kitchen", "thirsty": "kitchen", "tired": "bedroom", "bored": "garden"}


def _motives(facts, question):
    feeling = {}
    for s in facts:
        m = re.match(r"^(\w+) is (\w+)\.$", s)
        if m:
            feeling[m[1].lower()] = m[2]
    m = re.match(r"^Where will (\w+) go\?$", question)
    if m:
        return _GOES[feeling[m[1]]]
    m = re.match(r"^Why did (\w+) (?:go to|get) the (\w+)\?$", question)
    if m:
        return feeling[m[1]]
    raise _fail("question", question)


_SOLVERS = {
    "qa4": _two_arg, "qa14": _time, "qa15": _deduction, "qa16": _induction,
    "qa17": _positional, "qa18": _size, "qa19": _path, "qa20": _motives,
}


def solve(task: str, facts, question: str) -> str:
    """The answer to `question` given the story statements `facts` (in order)."""
    check_task(task)
    return _SOLVERS.get(task, _people)(facts, question.strip())


def is_correct(task: str, answer: str, target: str) -> bool:
    """Exact match, except that qa8's lists count in any order."""
    if task == "qa8":
        return sorted(answer.split(",")) == sorted(target.split(","))
    return answer == target
