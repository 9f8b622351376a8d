"""The BABILong metric: the official label-set match, and exact match.

Label-set match (as the reference scores model outputs, BABILONG_SPEC.md): lower-case the
output, keep the text before the first '.', cut it at '<context>' or '<example>'; collect
the task's labels (tasks.LABELS) that occur in it as substrings, drop those that also
occur in the question. The answer is correct when the target is the only label left; for
a list target (qa8 'apple,milk') when every part is there and nothing else is.

Matching is plain substring matching, mirrored literally, with its consequences:
- qa7: 'one' is a substring of 'none', so an output saying 'none' always holds both
  labels and is never correct, even when the target is 'none'.
- A label that occurs in the question is never counted, so a target that the question
  names can never be scored correct.
- 'no' matches inside 'nothing', 'not', 'north' (qa6, qa9, qa10, qa17, qa18).
qa19 labels contain commas ('n,w'): a target that is itself one of the task's labels is a
single label; only other comma-separated targets are lists. (The reference tells them
apart by `len(target) > 3`; asking the label set says the same for every bAbI target.)

Exact match (for models trained on the task, like RMT): both sides stripped,
lower-cased, a trailing '.' removed, whitespace collapsed (none kept around commas); a
list target is compared as an order-insensitive multiset of its comma-separated parts.

All functions are pure; the batch scorer returns plain floats.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from babilong_tfds.tasks import LABELS, check_task

# The tasks whose mean is the BABILong leaderboard score.
LEADERBOARD_TASKS: tuple[str, ...] = ("qa1", "qa2", "qa3", "qa4", "qa5")

# The reference cuts generated text where a model starts to make up further examples.
_STOP_MARKERS = ("<context>", "<example>")


def preprocess_output(output: str) -> str:
    """Lower-cases, keeps the text before the first '.', and cuts at '<context>'/'<example>'."""
    text = output.lower().split(".")[0]
    for marker in _STOP_MARKERS:
        text = text.split(marker)[0]
    return text


def found_labels(output: str, question: str, task: str) -> set[str]:
    """The task's labels in the preprocessed output, less those named in the question."""
    labels = [label.lower() for label in LABELS[check_task(task)]]
    text = preprocess_output(output)
    question = question.lower()
    in_output = {label for label in labels if label in text}
    in_question = {label for label in labels if label in question}
    return in_output - in_question


def target_parts(target: str, task: str) -> list[str]:
    """A target as the labels it must match: one label, or the parts of a list."""
    target = target.strip().lower()
    if target in (label.lower() for label in LABELS[check_task(task)]):
        return [target]
    return [part.strip() for part in target.split(",")]


def label_score(target: str, output: str, question: str, task: str) -> bool:
    """The official label-set match of one output (see the module docstring)."""
    found = found_labels(output, question, task)
    parts = set(target_parts(target, task))
    return found == parts


def _normalise(text: str) -> str:
    text = " ".join(text.strip().lower().split())
    text = text[:-1].rstrip() if text.endswith(".") else text
    # 'apple, milk' and 'n, w' are written with and without the space.
    return re.sub(r" ?, ?", ",", text)


def exact_match(target: str, output: str, task: str | None = None) -> bool:
    """Normalised exact match; lists compare as multisets of their comma-separated parts.

    Pass `task` for qa19: there 'n,w' is one label and order matters ('w,n' differs).
    Without a task every comma-separated target is taken as a list.
    """
    target, output = _normalise(target), _normalise(output)
    if task is not None and target_parts(target, task) == [target]:
        return target == output
    return sorted(target.split(",")) == sorted(output.split(","))


def score_batch(
    targets: Sequence[str], outputs: Sequence[str], questions: Sequence[str], task: str
) -> dict[str, float]:
    """Means over a batch of one task: {'label_accuracy', 'exact_match', 'count'}."""
    check_task(task)
    if not len(targets) == len(outputs) == len(questions):
        raise ValueError(
            f"targets, outputs and questions differ in length: {len(targets)}, "
            f"{len(outputs)}, {len(questions)}"
        )
    if not targets:
        raise ValueError(f"no samples to score for {task}")
    n = len(targets)
    rows = list(zip(targets, outputs, questions, strict=True))
    label = sum(label_score(t, o, q, task) for t, o, q in rows)
    exact = sum(exact_match(t, o, task) for t, o, _ in rows)
    return {"label_accuracy": label / n, "exact_match": exact / n, "count": float(n)}


def score_cell(
    targets: Sequence[str], outputs: Sequence[str], questions: Sequence[str], task: str,
    *, num_examples: int = 3,
) -> tuple[dict, list[dict]]:
    """One (task, length) cell of a results table: ({'accuracy', 'exact_match', 'count'},
    the first `num_examples` rows as {'question', 'target', 'output', 'correct'})."""
    scores = score_batch(targets, outputs, questions, task)
    cell = {"accuracy": scores["label_accuracy"], "exact_match": scores["exact_match"],
            "count": int(scores["count"])}
    examples = [{"question": q, "target": t, "output": o, "correct": label_score(t, o, q, task)}
                for q, t, o in list(zip(questions, targets, outputs, strict=True))[:num_examples]]
    return cell, examples


def leaderboard_score(task_scores: Mapping[str, float]) -> float:
    """The BABILong leaderboard number: the mean score over qa1..qa5."""
    missing = [t for t in LEADERBOARD_TASKS if t not in task_scores]
    if missing:
        raise ValueError(f"leaderboard score needs {', '.join(missing)} too")
    return sum(task_scores[t] for t in LEADERBOARD_TASKS) / len(LEADERBOARD_TASKS)


def leaderboard_means(results: Mapping[str, Mapping[str, Mapping[str, float]]],
                      lengths: Sequence[str]) -> dict[str, float]:
    """{length: mean accuracy over qa1..qa5} of a results table {task: {length: cell}}, for
    the lengths where all five were run."""
    means = {}
    for length in lengths:
        scores = {t: results[t][length]["accuracy"] for t in LEADERBOARD_TASKS
                  if length in results.get(t, {})}
        if len(scores) == len(LEADERBOARD_TASKS):
            means[length] = leaderboard_score(scores)
    return means
