"""The rule-based bAbI solver: every original v1.1 question, and hand-made cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from babilong_tfds.babi import parse_babi
from babilong_tfds.babi_solver import is_correct, solve
from babilong_tfds.tasks import TASK_NAMES, TASKS

V11 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "babi" / "v1.1" / "en"

# The original qa5 files ask 'What did X give to Y?' about the earlier of two gifts between
# the same two people at these four lines, and about the latest gift everywhere else: no
# single reading answers both, so exactly these (and nothing else) may miss.
_KNOWN_MISSES = {
    "qa5_three-arg-relations_train.txt:221",
    "qa5_three-arg-relations_train.txt:224",
    "qa5_three-arg-relations_test.txt:2061",
    "qa5_three-arg-relations_test.txt:5853",
}


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("task", TASKS)
def test_solves_original_v11(task, split):
    path = V11 / f"{task}_{TASK_NAMES[task]}_{split}.txt"
    if not path.exists():
        pytest.skip(f"original bAbI file absent: expected {path}")
    samples = parse_babi(path.read_text().splitlines(), task, path.name)
    misses = [
        s.origin
        for s in samples
        if not is_correct(task, solve(task, s.facts, s.question), s.answer)
    ]
    assert set(misses) <= _KNOWN_MISSES, misses[:5]


@pytest.mark.parametrize(
    "task, facts, question, answer",
    [
        (
            "qa1",
            ["Mary walked to the office.", "Mary ran to the garden."],
            "Where is Mary?",
            "garden",
        ),
        (
            "qa2",
            [
                "John went to the kitchen.",
                "John took the milk there.",
                "John moved to the office.",
                "John set down the milk.",
            ],
            "Where is the milk?",
            "office",
        ),
        (
            "qa3",
            [
                "John went to the kitchen.",
                "John took the milk.",
                "John moved to the office.",
                "John went to the garden.",
                "John dropped the milk.",
            ],
            "Where was the milk before the garden?",
            "office",
        ),
        (
            "qa8",
            [
                "Sandra went to the hallway.",
                "Sandra got the milk there.",
                "Sandra grabbed the apple there.",
            ],
            "What is Sandra carrying?",
            "milk,apple",
        ),
        ("qa10", ["Bill is either in the park or the school."], "Is Bill in the park?", "maybe"),
        (
            "qa13",
            ["Mary and John went to the office.", "Later they headed to the garden."],
            "Where is John?",
            "garden",
        ),
        (
            "qa19",
            ["The office is east of the hallway.", "The kitchen is north of the office."],
            "How do you go from the kitchen to the hallway?",
            "s,w",
        ),
    ],
)
def test_hand_made(task, facts, question, answer):
    assert solve(task, facts, question) == answer


def test_rejects_what_it_cannot_read():
    with pytest.raises(ValueError, match="cannot read"):
        solve("qa1", ["Mary flew."], "Where is Mary?")
    with pytest.raises(ValueError, match="qa1..qa20"):
        solve("qa0", [], "Where is Mary?")
