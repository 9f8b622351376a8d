"""Which qa1 questions a model gets wrong: accuracy by the person asked about and by the number
of facts before the question, on the original qa1 test stories (the official recipe, greedy
answers as `launch.evaluate` decodes them).

    python results/qa1_cpu/errors_by_name.py --workdir=results/qa1_cpu/model --length=0k \
        --num_samples=500 --out=results/qa1_cpu/lookup_probes/shipped_0k.json

Prints one table per breakdown and, for a wrong answer, whose location it gave (the asked
person's own earlier room, another person's latest room, or neither), and writes the counts
as JSON to --out, with the cosine similarity of the model's embeddings of the four names.
"""
from __future__ import annotations

import collections
import json
import os
import re

import numpy as np
from absl import app, flags

from babilong_tfds.babi_generator.vocab import HOUSE_ACTORS
from rmt_jax import checkpointing, evaluate_lib, input_pipeline
from rmt_jax.checkpointing import parse_step

_WORKDIR = flags.DEFINE_string("workdir", "results/qa1_cpu/model", "checkpoint or export")
_STEP = flags.DEFINE_string("step", "best", "'best', 'latest' or a step")
_LENGTH = flags.DEFINE_string("length", "0k", "BABILong length, 0k to 128k (no streaming here)")
_NUM = flags.DEFINE_integer("num_samples", 500, "test questions (the file holds 1,000)")
_BATCH = flags.DEFINE_integer("batch_size", 50, "rows per forward pass")
_OUT = flags.DEFINE_string("out", None, "JSON file for the counts (optional)")

NAMES = tuple(sorted(HOUSE_ACTORS))  # qa1's four people
MOVE = re.compile(rf"\b({'|'.join(NAMES)}) (?:\w+ )+?the (\w+)\.")


def text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def rooms_by_person(facts: list[str]) -> dict[str, list[str]]:
    """person -> the rooms of their moves, in story order."""
    rooms = collections.defaultdict(list)
    for fact in facts:
        for person, room in MOVE.findall(fact):
            rooms[person].append(room)
    return rooms


def kind_of_error(person: str, output: str, rooms: dict[str, list[str]]) -> str:
    """A wrong answer: one of the asked person's earlier rooms (checked first), another
    person's latest room, or neither."""
    if output in rooms.get(person, [])[:-1]:
        return "own earlier room"
    others = [p for p, r in rooms.items() if p != person and r and r[-1] == output]
    if others:
        return "another person's latest room"
    return "other"


def main(argv):
    del argv
    model, config, step = checkpointing.restore_for_inference(
        _WORKDIR.value, step=parse_step(_STEP.value))
    config = evaluate_lib.official_recipe(config)
    tokenizer = input_pipeline.make_tokenizer(config)
    composer = input_pipeline.make_composer(config)
    records = list(evaluate_lib.iter_records(
        "qa1", _LENGTH.value, _NUM.value, source="files", composer=composer,
        babi_root=config.data.babi_dir))
    encoded = evaluate_lib.encode_records(records, tokenizer, config)
    ids = evaluate_lib.predict(model, encoded, max_new_tokens=config.data.max_answer_len,
                               batch_size=_BATCH.value, streaming=False, chunk_segments=64,
                               stop_id=int(tokenizer.eos_id))
    by_name = collections.defaultdict(lambda: [0, 0])
    by_facts = collections.defaultdict(lambda: [0, 0])
    errors = collections.Counter()
    confused = collections.Counter()
    for record, answer_ids in zip(records, ids, strict=True):
        output = input_pipeline.decode_answer(answer_ids, tokenizer).strip()
        target = text(record["target"])
        person = text(record["question"]).split()[2].rstrip("?")
        facts = [text(f) for f in record["facts"]]
        right = output == target
        by_name[person][0] += right
        by_name[person][1] += 1
        by_facts[len(facts)][0] += right
        by_facts[len(facts)][1] += 1
        if not right:
            rooms = rooms_by_person(facts)
            kind = kind_of_error(person, output, rooms)
            errors[kind] += 1
            if kind == "another person's latest room":
                for other, r in rooms.items():
                    if other != person and r and r[-1] == output:
                        confused[f"{person} -> {other}"] += 1
    total = sum(n for _, n in by_name.values())
    right = sum(k for k, _ in by_name.values())
    print(f"step {step} of {_WORKDIR.value}, qa1 at {_LENGTH.value}: {right}/{total} "
          f"({100 * right / total:.1f}%)")
    print("| person asked | right | accuracy |\n| --- | ---: | ---: |")
    for name, (k, n) in sorted(by_name.items()):
        print(f"| {name} | {k}/{n} | {100 * k / n:.0f}% |")
    print("| facts before the question | right | accuracy |\n| --- | ---: | ---: |")
    for count, (k, n) in sorted(by_facts.items()):
        print(f"| {count} | {k}/{n} | {100 * k / n:.0f}% |")
    print("wrong answers:", dict(errors))
    print("another person's latest room, asked -> whose:", dict(confused.most_common()))
    # how alike the model's token embeddings of the four names are (cosine)
    emb = np.asarray(model.wte[...], np.float32)[[tokenizer.encode(n)[0] for n in NAMES]]
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cosine = np.round(emb @ emb.T, 3)
    print("cosine of the name embeddings (" + ", ".join(NAMES) + "):")
    print(cosine)
    if _OUT.value:
        os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
        with open(_OUT.value, "w") as f:
            json.dump({"workdir": _WORKDIR.value, "step": int(step), "length": _LENGTH.value,
                       "accuracy": right / total, "count": total,
                       "by_name": dict(by_name), "by_facts": dict(by_facts),
                       "errors": dict(errors), "confused": dict(confused),
                       "name_cosine": {"names": NAMES, "matrix": cosine.tolist()}}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
