"""Checks of generated bAbI data against the solver and the original files.

Pure functions over lists of `BabiSample`s; the benchmark script and the tests share them.
- `accuracy(samples)`: the solver's agreement with the samples' answers.
- `support_sufficiency(samples)`: the same, given only the supporting facts (in story
  order).
- `task_stats(samples)`: facts per question, answer frequencies, distances from the
  question back to its supporting facts (nearest and farthest, in statements).
- `tv_distance(p, q)`: total variation distance between two frequency tables.
- `overlap(generated, original)`: the fraction of generated stories whose full statement
  sequence appears among the originals', and of generated 3-statement windows that do.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from babilong_tfds.babi import BabiSample
from babilong_tfds.babi_solver import is_correct, solve


def accuracy(samples: Sequence[BabiSample]) -> float:
    ok = sum(is_correct(s.task, solve(s.task, s.facts, s.question), s.answer) for s in samples)
    return ok / max(len(samples), 1)


def support_sufficiency(samples: Sequence[BabiSample]) -> float:
    ok = 0
    for s in samples:
        try:
            answer = solve(s.task, [s.facts[i] for i in sorted(s.supporting)], s.question)
        except (ValueError, KeyError, IndexError, StopIteration, AttributeError, TypeError):
            continue  # the supporting facts alone do not let the solver answer
        ok += is_correct(s.task, answer, s.answer)
    return ok / max(len(samples), 1)


def task_stats(samples: Sequence[BabiSample]) -> dict:
    n = max(len(samples), 1)
    answers = Counter(s.answer.lower() for s in samples)
    return {
        "questions": len(samples),
        "facts_per_question": sum(len(s.facts) for s in samples) / n,
        "answer_freq": {a: c / n for a, c in sorted(answers.items())},
        "dist_nearest": sum(len(s.facts) - max(s.supporting) for s in samples) / n,
        "dist_farthest": sum(len(s.facts) - min(s.supporting) for s in samples) / n,
        "supporting_per_question": sum(len(s.supporting) for s in samples) / n,
    }


def tv_distance(p: dict[str, float], q: dict[str, float]) -> float:
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def _stories(samples: Sequence[BabiSample]) -> list[tuple[str, ...]]:
    """The full statement sequence of each story (its last question's facts)."""
    last: dict[tuple, tuple[str, ...]] = {}
    for s in samples:
        key = (s.origin.rsplit(":", 1)[0] if s.origin.startswith("generated") else "", s.story)
        if len(s.facts) >= len(last.get(key, ())):
            last[key] = s.facts
    return list(last.values())


def overlap(generated: Sequence[BabiSample], original: Sequence[BabiSample]) -> dict:
    orig_stories = set(_stories(original))
    orig_windows = {st[i:i + 3] for st in orig_stories for i in range(len(st) - 2)}
    orig_sentences = {x for st in orig_stories for x in st}
    gen = _stories(generated)
    windows = [st[i:i + 3] for st in gen for i in range(len(st) - 2)]
    sentences = [x for st in gen for x in st]
    return {
        "stories": len(gen),
        "story_overlap": sum(st in orig_stories for st in gen) / max(len(gen), 1),
        "window3_overlap": sum(w in orig_windows for w in windows) / max(len(windows), 1),
        "sentence_overlap": sum(x in orig_sentences for x in sentences) / max(len(sentences), 1),
    }
