"""The bAbI generator: structure, reproducibility, bad input, and agreement with the
independent solver and with the statistics of the original v1.1 files."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import pytest

from babilong_tfds.babi import BabiSample, parse_babi
from babilong_tfds.babi_generator import GeneratedBabi, generate_samples, generate_story, vocab
from babilong_tfds.babi_generator.validation import (
    accuracy,
    overlap,
    support_sufficiency,
    task_stats,
    tv_distance,
)
from babilong_tfds.tasks import LABELS, TASK_NAMES, TASKS

V11 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "babi" / "v1.1" / "en"
QUESTIONS = 1000  # per task; the benchmark script checks 10,000


@functools.cache
def _originals(task: str) -> list[BabiSample]:
    if not V11.exists():
        pytest.skip(f"original bAbI v1.1 files absent: expected {V11}")
    out = []
    for split in ("train", "test"):
        path = V11 / f"{task}_{TASK_NAMES[task]}_{split}.txt"
        out += parse_babi(path.read_text().splitlines(), task, f"{split}")
    return out


@functools.cache
def _generated(task: str) -> list[BabiSample]:
    return generate_samples(task, seed=7, num_samples=QUESTIONS)


@pytest.mark.parametrize("task", TASKS)
def test_structure_and_labels(task):
    samples = _generated(task)
    assert len(samples) == QUESTIONS
    labels = set(LABELS[task])
    for s in samples[:300]:
        assert s.task == task and s.facts and s.question
        assert all(0 <= i < len(s.facts) for i in s.supporting) and s.supporting
        assert s.origin == f"generated:{task}:7:{s.story}"
        parts = s.answer.lower().split(",") if task == "qa8" else [s.answer.lower()]
        assert set(parts) <= labels, (s.answer, labels)


@pytest.mark.parametrize("task", TASKS)
def test_story_samples_share_their_statements(task):
    story = generate_story(task, 3, 11)
    assert story
    longest = max(story, key=lambda s: len(s.facts)).facts
    for s in story:
        assert longest[: len(s.facts)] == s.facts
        assert s.story == 11


def test_reproducible_and_varied():
    for task in TASKS:
        a, b = generate_story(task, 5, 42), generate_story(task, 5, 42)
        assert a == b
        others = [generate_story(task, 5, i) for i in range(43, 53)]
        assert any(o != a for o in others)
        assert generate_story(task, 6, 42) != a or task in ("qa4",)
    gen = GeneratedBabi("qa2", 5)
    assert gen.story(3) == generate_story("qa2", 5, 3)
    assert generate_samples("qa2", 5, 12, start=3)[:5] == gen.story(3)[:5]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: generate_story("qa21", 0, 0), "qa1..qa20"),
        (lambda: generate_story("qa1", 1.0, 0), "seed must be an integer"),
        (lambda: generate_story("qa1", True, 0), "seed must be an integer"),
        (lambda: generate_story("qa1", "0", 0), "seed must be an integer"),
        (lambda: generate_story("qa1", -1, 0), "expected 0 or more"),
        (lambda: generate_story("qa1", 0, -1), "index"),
        (lambda: generate_story("qa1", 0, 2.0), "index must be an integer"),
        (lambda: generate_story("qa1", 0, 0, num_actors=5), "expected 1..4"),
        (lambda: generate_story("qa12", 0, 0, num_actors=1), "expected 2..4"),
        (lambda: generate_story("qa1", 0, 0, num_questions=0), "expected 1..1000"),
        (lambda: generate_story("qa19", 0, 0, path_length=6), "expected 1..5"),
        (lambda: generate_story("qa4", 0, 0, num_actors=2), "no parameter num_actors"),
        (lambda: generate_samples("qa1", 0, 0), "num_samples 0"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_parameters_take_effect():
    assert len(generate_story("qa1", 0, 0, num_questions=3)) == 3
    for s in generate_story("qa1", 0, 1, num_actors=1):
        assert {f.split()[0] for f in s.facts} == {s.question.split()[2].rstrip("?")}
    for index in range(20):
        (s,) = generate_story("qa19", 0, index, path_length=4)
        assert len(s.answer.split(",")) == 4 and len(s.supporting) == 4


@pytest.mark.parametrize("task", TASKS)
def test_solver_answers_every_generated_question(task):
    assert accuracy(_generated(task)) == 1.0


# Every task, qa3 included. The originals' qa3 support does not always suffice (0.21 of
# their questions): it names the drop and the two moves but not the pick-up that tied the
# object to its carrier. The generator adds the pick-up (see `actors._where_before`).
@pytest.mark.parametrize("task", TASKS)
def test_supporting_facts_suffice(task):
    assert support_sufficiency(_generated(task)) == 1.0


def test_qa3_support_extends_the_original_convention():
    # The originals' three facts (the object's latest event, the move into the last place,
    # the move into the one before) come first, in their order; the pick-up follows where
    # it is not the latest event, so a question has 3 supporting facts while its object is
    # held and 4 once it has been dropped.
    for s in _generated("qa3")[:300]:
        dropped = any(f" {v} the " in s.facts[s.supporting[0]] for v in vocab.DROP_VERBS)
        assert len(s.supporting) == (4 if dropped else 3), (s.question, s.supporting)
        assert s.supporting[1] > s.supporting[2]
        if dropped:
            assert s.supporting[3] < s.supporting[1]
            assert not any(f" {v} the " in s.facts[s.supporting[3]] for v in vocab.DROP_VERBS)


# Tolerances, per task where a looser one is needed and why:
# - qa2: the originals ask about an object only after long stretches without a question
#   (gaps up to 34 statements) that our recency rule reproduces only in part.
# (qa3's supporting facts per question run about 13% above the originals' 3.0, since the
# pick-up is added once the object is dropped; that is inside the common 0.35.)
_FPQ_TOL = {"qa2": 0.25}
_DIST_TOL = {}


@pytest.mark.parametrize("task", TASKS)
def test_statistics_close_to_originals(task):
    gen, orig = task_stats(_generated(task)), task_stats(_originals(task))
    fpq_tol = _FPQ_TOL.get(task, 0.25)
    assert abs(gen["facts_per_question"] / orig["facts_per_question"] - 1) <= fpq_tol
    assert tv_distance(gen["answer_freq"], orig["answer_freq"]) <= 0.15
    dist_tol = _DIST_TOL.get(task, 0.30)
    assert abs(gen["dist_nearest"] / orig["dist_nearest"] - 1) <= dist_tol
    assert gen["supporting_per_question"] == pytest.approx(
        orig["supporting_per_question"], rel=0.35
    )


# Where a task's whole world is tiny, overlap with the originals is expected and bounded
# by how much of that world the originals already hold:
# - qa4: two statements over 6 rooms and 2 axes: a few thousand possible stories, of
#   which the 2,000 original ones cover a large part.
# - qa17: two statements over 6 shapes and 4 relations.
# - qa15, qa16: 8-9 short statements from a dozen words ('Lily is a frog.'), so runs of
#   three statements repeat.
_STORY_OVERLAP = {"qa4": 0.5, "qa17": 0.05}
_WINDOW_OVERLAP = {"qa15": 0.2, "qa16": 0.35}


@pytest.mark.parametrize("task", TASKS)
def test_no_story_copied_from_originals(task):
    result = overlap(_generated(task), _originals(task))
    assert result["story_overlap"] <= _STORY_OVERLAP.get(task, 0.0)
    assert result["window3_overlap"] <= _WINDOW_OVERLAP.get(task, 0.02)


def _pattern(fact: str) -> str:
    """A statement with its names, places and objects replaced by X: its wording."""
    nouns = {*vocab.HOUSE_ACTORS, *vocab.GIVING_ACTORS, *vocab.TOWN_ACTORS, *vocab.ROOMS,
             *vocab.TOWN, *vocab.OBJECTS}
    return " ".join("X" if w.strip(".") in nouns else w for w in fact.split())


@pytest.mark.parametrize("task", ["qa1", "qa2", "qa3", "qa5", "qa11", "qa13"])
def test_default_wording_is_the_files_own_and_synonyms_are_an_option(task):
    files = {_pattern(f) for s in _originals(task) for f in s.facts}
    default = {_pattern(f) for s in _generated(task)[:300] for f in s.facts}
    assert default <= files, sorted(default - files)[:5]
    with_synonyms = generate_samples(task, seed=7, num_samples=300, synonyms=True)
    assert all(s.origin.startswith(f"generated+synonyms:{task}:7:") for s in with_synonyms)
    extra = {_pattern(f) for s in with_synonyms for f in s.facts} - files
    ours = {*vocab.SYNONYM_WORDING.move, *vocab.SYNONYM_WORDING.pick,
            *vocab.SYNONYM_WORDING.drop, *vocab.SYNONYM_WORDING.give,
            *vocab.SYNONYM_WORDING.follow_ups} - {
        *vocab.BABI_WORDING.move, *vocab.BABI_WORDING.pick, *vocab.BABI_WORDING.drop,
        *vocab.BABI_WORDING.give, *vocab.BABI_WORDING.follow_ups}
    assert extra and all(any(w in p for w in ours) for p in extra), sorted(extra)[:5]
    with pytest.raises(ValueError, match="synonyms must be True or False"):
        GeneratedBabi(task, 0, synonyms="yes")


def _recent_share(samples: list[BabiSample]) -> float:
    """The share of questions whose supporting statement is one of the last two."""
    return sum(max(s.supporting) >= len(s.facts) - 2 for s in samples) / len(samples)


def _last_place_share(samples: list[BabiSample]) -> float:
    """The share of qa1 questions that 'the last place named' answers."""
    return sum(s.facts[-1].rstrip(".").split()[-1] == s.answer for s in samples) / len(samples)


def test_question_recency_sets_how_often_the_last_two_statements_are_asked():
    n = 3000
    default = generate_samples("qa1", seed=3, num_samples=n)
    # None is the task's own chance, byte for byte the stories drawn without the option
    assert generate_samples("qa1", seed=3, num_samples=n, recency=None) == default
    uniform = generate_samples("qa1", seed=3, num_samples=n, recency=0.0)
    always = generate_samples("qa1", seed=3, num_samples=n, recency=1.0)
    assert all(s.origin.startswith("generated@0:qa1:3:") for s in uniform)
    assert all(s.origin.startswith("generated@1:qa1:3:") for s in always)
    # the same seed, the same stories again
    assert generate_samples("qa1", seed=3, num_samples=n, recency=0.0) == uniform
    shares = [_recent_share(x) for x in (uniform, default, always)]
    assert shares[0] < shares[1] - 0.1 < shares[2] - 0.2, shares
    assert shares[2] > 0.97, shares  # 1.0: a recent question whenever there is one
    # the last-place shortcut pays less when any person may be asked
    assert _last_place_share(uniform) < _last_place_share(default) - 0.08
    # every answer is still right: the supporting statement names the answer
    for s in uniform[:500]:
        assert all(s.answer in s.facts[i] for i in s.supporting)
    # a task without the knob ignores it
    assert generate_samples("qa4", seed=3, num_samples=50, recency=0.0) == [
        dataclasses.replace(s, origin=s.origin.replace("generated:", "generated@0:"))
        for s in generate_samples("qa4", seed=3, num_samples=50)]


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.5", True, float("nan")])
def test_question_recency_out_of_range_is_an_error(bad):
    with pytest.raises(ValueError, match="question recency must be a number from 0 to 1"):
        GeneratedBabi("qa1", 0, recency=bad)
