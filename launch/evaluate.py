r"""Evaluates a trained RMT checkpoint on BABILong: results.json, heatmap.png and a table.

    python -m launch.evaluate --workdir=/tmp/rmt_qa1 --tasks=qa1,qa2 --lengths=0k,1k,4k
    python -m launch.evaluate --workdir=/tmp/rmt_qa1 --tasks=qa1 --lengths=1M --num_samples=20 \
        --step=latest --out_dir=/tmp/rmt_qa1/eval_1m
    python -m launch.evaluate --workdir=/tmp/rmt_qa1 --tasks=qa1 --lengths=4k --source=tfds \
        --data_dir=/tmp/babilong
    python -m launch.evaluate --workdir=/tmp/rmt_qa1 --tasks=qa1,qa2 --lengths=0k,1k \
        --data=/tmp/babilong_jsonl      # or a Hugging Face layout folder, or hf:RMT-team/babilong

Writes `{out_dir}/results.json` (accuracy = the official label-set score, exact match and
count per task and length; the qa1..qa5 mean when all five ran) and `{out_dir}/heatmap.png`
(accuracy by task and length), after every cell: stopped midway, the same command continues
from the cells it finished (`--noresume` runs them all again). 1M and 10M contexts are
streamed in chunks of segments, batch by batch. `--model_override=FIELD=VALUE` changes a saved
model field that leaves the parameters as they are (e.g. `attention_chunk=512` for a
full-attention model saved with one window).
Bad arguments and a missing checkpoint stop before anything is written.
"""

from __future__ import annotations

import ast
import os
import sys

from absl import app, flags

from launch.outputs import check_output_dir
from rmt_jax import checkpointing, evaluate_lib, host_memory

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir holding the checkpoints.",
                               required=True)
_TASKS = flags.DEFINE_string("tasks", "qa1", "Comma-separated qa1..qa20, or 'all'.")
_LENGTHS = flags.DEFINE_string("lengths", "0k,1k,2k,4k", "Comma-separated 0k..10M, or 'all'.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 100, "Test samples per task and length.")
_SOURCE = flags.DEFINE_enum(
    "source", "files", list(evaluate_lib.SOURCES),
    "'files': bAbI test questions hidden on the fly; 'generated': simulator stories; "
    "'tfds': a materialized split (see --data_dir, --tfds_name); 'published': the samples "
    "of --data (the default when --data is given).")
_DATA = flags.DEFINE_string(
    "data", None, "Published samples for --source=published: a JSONL export folder "
    "({task}/{length}.jsonl), a folder in the Hugging Face layout, or hf:RMT-team/babilong.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir for --source=tfds.")
_TFDS_NAME = flags.DEFINE_string("tfds_name", evaluate_lib.DEFAULT_TFDS_NAME,
                                 "TFDS dataset name pattern with {task} and {length}.")
_RECIPE = flags.DEFINE_enum(
    "recipe", "config", list(evaluate_lib.RECIPES),
    "How 'files'/'generated' samples are made: 'config', as the training config says; "
    "'official', as the published generator (1k = 1,000 tokens, the line filter, the exact "
    "fill, Punkt sentences), in the model's tokenizer.")
_STEP = flags.DEFINE_string("step", "best", "Checkpoint: 'best', 'latest' or a step number.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where results go (default: WORKDIR/eval).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Samples per batch (streamed ones too).")
_STREAM_FROM = flags.DEFINE_string("stream_from", evaluate_lib.DEFAULT_STREAM_FROM,
                                   "Lengths from this one on are streamed in chunks of segments.")
_CHUNK_SEGMENTS = flags.DEFINE_integer("chunk_segments", 64,
                                       "Segments per streamed chunk (1M and 10M).")
_ALLOW_REUSE = flags.DEFINE_bool("allow_reuse", False,
                                 "Let a sample reuse books (10M on the 35 offline books).")
_RESUME = flags.DEFINE_bool(
    "resume", True, "Continue an evaluation stopped midway: the finished cells of a partial "
    "results.json in --out_dir made by the same evaluation are kept (--noresume: run all).")


_MODEL_OVERRIDE = flags.DEFINE_multi_string(
    "model_override", [], "FIELD=VALUE: a saved model field to change that leaves the "
    "parameters as they are (how the model computes), e.g. attention_chunk=512 or "
    "attention_impl=xla; repeat for more.")


def parse_overrides(items: list[str]) -> dict:
    """['attention_chunk=512', ...] -> {'attention_chunk': 512, ...}: Python literals, else
    strings; a ValueError for an item without '='."""
    out = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--model_override={item!r} is not FIELD=VALUE "
                             "(e.g. --model_override=attention_chunk=512)")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            value = text.strip()
        out[name.strip()] = value
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    host_memory.keep()  # before JAX starts its CPU client
    checkpointing.quiet_orbax_logs()
    source = _SOURCE.value
    if _DATA.value and not flags.FLAGS["source"].present:
        source = "published"
    try:
        check_output_dir(_OUT_DIR.value or os.path.join(_WORKDIR.value, "eval"), "--out_dir")
        results = evaluate_lib.evaluate_checkpoint(
            _WORKDIR.value,
            tasks=_TASKS.value,
            lengths=_LENGTHS.value,
            step=_STEP.value,
            out_dir=_OUT_DIR.value,
            num_samples=_NUM_SAMPLES.value,
            source=source,
            data=_DATA.value,
            data_dir=_DATA_DIR.value,
            batch_size=_BATCH_SIZE.value,
            tfds_name=_TFDS_NAME.value,
            stream_from=_STREAM_FROM.value,
            chunk_segments=_CHUNK_SEGMENTS.value,
            allow_reuse=_ALLOW_REUSE.value,
            recipe=_RECIPE.value,
            resume=_RESUME.value,
            model_overrides=parse_overrides(_MODEL_OVERRIDE.value),
        )
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(evaluate_lib.format_table(results))
    meta = results["meta"]
    print(f"step {meta['step']} of {meta['workdir']}; results in "
          f"{_OUT_DIR.value or meta['workdir'] + '/eval'}")


if __name__ == "__main__":
    app.run(main)
