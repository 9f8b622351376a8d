"""Fresh bAbI stories for qa1..qa20, drawn from small simulated worlds.

Contract:
- `generate_story(task, seed, index)` returns the samples of one story, one
  `babi.BabiSample` per question, in the structure `babi.parse_babi` gives: `facts` are
  the story's statements before the question, `supporting` indexes into `facts`,
  `story=index` and `origin='generated:{task}:{seed}:{index}'`.
- The same `(task, seed, index)` (and parameters) gives the same story on every run and
  machine: each story draws from its own `random.Random`, seeded with an integer that
  packs seed, task number and index without collisions.
- Answers fall in `tasks.LABELS[task]` (qa8: comma-separated lists or 'nothing'; qa19:
  'n,w'), with the default parameters (a longer qa19 path gives longer direction lists).
- Bad input raises ValueError naming the problem and the valid range.
- Wording: the statements use the verbs and sentence openers of the bAbI files
  (`vocab.BABI_WORDING`); `synonyms=True` adds a few of our own (`vocab.SYNONYM_WORDING`:
  'walked', 'collected', 'Later', ...) and marks the origin 'generated+synonyms:...'.
- Question recency: in the people-and-objects tasks (`actors.TASKS`: qa1-3, qa5-13) a
  question asks about one of the last two statements with the task's own chance (qa1: 0.6,
  as in bAbI), which makes "the last place named" right on about 60% of qa1 questions;
  `recency=p` sets that chance (0.0: any person or object alike). The other tasks have no
  such knob and ignore it. A story drawn with a `recency` is marked
  'generated@{recency}:...' in its origin.

The worlds: `actors` (people moving and handling objects: qa1-3, qa5-13), `relations`
(places and sizes: qa4, qa17-19) and `logic` (time, deduction, induction, motives: qa14-16,
qa20).
"""

from __future__ import annotations

import numbers
import random
from collections.abc import Iterator

from babilong_tfds.babi import BabiSample
from babilong_tfds.babi_generator import actors, logic, relations, vocab
from babilong_tfds.tasks import TASKS, check_task

__all__ = ["GeneratedBabi", "PARAMETERS", "check_recency", "generate_samples", "generate_story"]

_MAX_INDEX = 1 << 64

# task -> {parameter: (default, smallest, largest)}; None where the task has no such knob.
PARAMETERS: dict[str, dict[str, tuple[int, int, int]]] = {}
for _t in actors.TASKS:
    PARAMETERS[_t] = {
        "num_actors": (actors.MAX_ACTORS[_t], actors.MIN_ACTORS[_t], actors.MAX_ACTORS[_t]),
        "num_questions": (5, 1, 1000),
    }
PARAMETERS["qa4"] = {"num_questions": (1, 1, 1000)}
PARAMETERS["qa14"] = {"num_actors": (4, 1, len(vocab.TOWN_ACTORS)), "num_questions": (5, 1, 12)}
PARAMETERS["qa15"] = {"num_actors": (4, 1, len(vocab.DEDUCTION_NAMES)),
                      "num_questions": (4, 1, 1000)}
PARAMETERS["qa16"] = {"num_actors": (5, 2, len(vocab.INDUCTION_NAMES)),
                      "num_questions": (1, 1, 1000)}
PARAMETERS["qa17"] = {"num_questions": (8, 1, 1000)}
PARAMETERS["qa18"] = {"num_questions": (5, 1, 1000)}
PARAMETERS["qa19"] = {"path_length": (2, 1, len(vocab.ROOMS) - 1), "num_questions": (1, 1, 1000)}
PARAMETERS["qa20"] = {"num_actors": (4, 1, len(vocab.MOTIVATED_ACTORS))}
# qa14 can ask at most about every second statement of at most 4 actors' 4 times of day.
assert set(PARAMETERS) == set(TASKS)


def _check_int(name: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        upper = f"..{high}" if high is not None else " or more"
        raise ValueError(f"{name} {value} is out of range: expected {low}{upper}")
    return value


def _check_params(task: str, params: dict) -> dict[str, int]:
    spec = PARAMETERS[task]
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise ValueError(f"{task} has no parameter {', '.join(unknown)}: expected some of "
                         f"{', '.join(spec) or 'none'}")
    out = {}
    for name, (default, low, high) in spec.items():
        value = params.get(name)
        out[name] = default if value is None else _check_int(f"{task} {name}", value, low, high)
    return out


def check_recency(recency) -> float | None:
    """`recency` as a float in [0, 1], or None; a ValueError naming the range otherwise."""
    if recency is None:
        return None
    if isinstance(recency, bool) or not isinstance(recency, numbers.Real) or not (
            0.0 <= float(recency) <= 1.0):
        raise ValueError(f"question recency must be a number from 0 to 1 (the chance to ask "
                         f"about one of the last two statements) or None, got {recency!r}")
    return float(recency)


def _entries(task: str, rng: random.Random, p: dict[str, int], words: vocab.Wording,
             recency: float | None = None):
    if task in actors.TASKS:
        return actors.story(task, rng, p["num_actors"], p["num_questions"], words, recency)
    if task == "qa4":
        return relations.two_arg_story(rng, p["num_questions"])
    if task == "qa14":
        return logic.time_story(rng, p["num_actors"], p["num_questions"])
    if task == "qa15":
        return logic.deduction_story(rng, p["num_actors"], p["num_questions"])
    if task == "qa16":
        return logic.induction_story(rng, p["num_actors"], p["num_questions"])
    if task == "qa17":
        return relations.positional_story(rng, p["num_questions"])
    if task == "qa18":
        return relations.size_story(rng, p["num_questions"])
    if task == "qa19":
        return relations.path_story(rng, p["path_length"], p["num_questions"])
    return logic.motivation_story(rng, p["num_actors"], 0)


class GeneratedBabi:
    """An unlimited, reproducible source of one task's stories: `.story(index)`."""

    def __init__(self, task: str, seed: int, *, synonyms: bool = False,
                 recency: float | None = None, **params: int | None):
        self.task = check_task(task)
        self.seed = _check_int("seed", seed, 0)
        self.params = _check_params(task, params)
        if not isinstance(synonyms, bool):
            raise ValueError(f"synonyms must be True or False, got {synonyms!r}")
        self.words = vocab.wording(synonyms)
        self.recency = check_recency(recency)
        self._task_no = TASKS.index(task) + 1
        mark = ("+synonyms" if synonyms else "") + (
            "" if self.recency is None else f"@{self.recency:g}")
        self._origin = f"generated{mark}:{task}:{self.seed}:"
        # The story's RNG seed: (seed, task number, index) packed into disjoint bits.
        self._base = (self.seed * 32 + self._task_no) << 64

    def story(self, index: int) -> list[BabiSample]:
        """The samples (one per question) of story `index`, 0 <= index < 2**64."""
        if type(index) is not int:
            index = _check_int("index", index, 0, _MAX_INDEX - 1)
        elif not 0 <= index < _MAX_INDEX:
            raise ValueError(f"index {index} is out of range: expected 0..2**64-1")
        task = self.task
        origin = self._origin + str(index)
        facts: list[str] = []
        out = []
        for e in _entries(task, random.Random(self._base | index), self.params, self.words,
                          self.recency):
            if type(e) is str:
                facts.append(e)
            else:
                out.append(BabiSample(task, tuple(facts), e[0], e[1], e[2], index, origin))
        return out

    def samples(self, num_samples: int, start: int = 0) -> list[BabiSample]:
        """The first `num_samples` samples of the stories `start`, `start + 1`, ..."""
        num_samples = _check_int("num_samples", num_samples, 1)
        start = _check_int("start", start, 0, _MAX_INDEX - 1)
        out: list[BabiSample] = []
        index = start
        while len(out) < num_samples:
            out.extend(self.story(index))
            index += 1
        del out[num_samples:]
        return out

    def __iter__(self) -> Iterator[BabiSample]:
        index = 0
        while True:
            yield from self.story(index)
            index += 1


def generate_story(task: str, seed: int, index: int, *, synonyms: bool = False,
                   recency: float | None = None, **params: int | None) -> list[BabiSample]:
    """The samples of story `index` of `task` under `seed` (see the module contract)."""
    return GeneratedBabi(task, seed, synonyms=synonyms, recency=recency, **params).story(index)


def generate_samples(task: str, seed: int, num_samples: int, start: int = 0, *,
                     synonyms: bool = False, recency: float | None = None,
                     **params: int | None) -> list[BabiSample]:
    """`num_samples` samples from the stories `start`, `start + 1`, ... (the last story
    may be cut short)."""
    return GeneratedBabi(task, seed, synonyms=synonyms, recency=recency,
                         **params).samples(num_samples, start)
