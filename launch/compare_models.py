r"""One heatmap of several models on one task: a row per run, then the published rows.

    python -m launch.compare_models --task=qa1 --lengths=0k,4k,16k,128k,1M \
        --run=RMT=results/compare_qa1_cpu/rmt/results.json \
        --run=ARMT=results/compare_qa1_cpu/armt/results.json --out_dir=results/compare_qa1_cpu

Each `--run=NAME=PATH` is a `results.json` written by `launch.evaluate` (a NAME given twice
merges its files' lengths, e.g. 0k..128k with 100 samples and 1M with 25); `--published` adds
the BABILong leaderboard's rows for the task (`babilong_tfds.leaderboard`). Writes
`comparison.json` (the grid, the rows, the sources) and `heatmap.png` into --out_dir, each
atomically, and prints the table. A missing or unreadable file is an `error:` line before
anything is written.
"""

from __future__ import annotations

import json
import sys

import numpy as np
from absl import app, flags

from babilong_tfds import leaderboard
from rmt_jax import evaluate_lib, files

_RUNS = flags.DEFINE_multi_string("run", [], "NAME=PATH of a results.json (repeatable)")
_TASK = flags.DEFINE_string("task", "qa1", "the task compared")
_LENGTHS = flags.DEFINE_list("lengths", ["0k", "4k", "16k", "128k", "1M"], "columns")
_PUBLISHED = flags.DEFINE_bool("published", True, "add the leaderboard's rows for the task")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "where comparison.json and heatmap.png go")
_TITLE = flags.DEFINE_string("title", "", "heatmap title (default: the task)")


def read_runs(specs: list[str]) -> dict[str, dict]:
    """['NAME=PATH', ...] -> {NAME: results}; ValueError naming a bad spec or file."""
    runs = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--run={spec!r}: expected NAME=PATH of a results.json")
        try:
            results = json.loads(files.run_path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"--run={spec!r}: cannot read {path} ({e}): run launch.evaluate "
                             "first, or fix the path") from e
        if name in runs:  # the same model evaluated again at other lengths
            for task, cells in results["results"].items():
                runs[name]["results"].setdefault(task, {}).update(cells)
        else:
            runs[name] = results
    if not runs:
        raise ValueError("no --run given: name at least one NAME=PATH of a results.json")
    return runs


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _OUT_DIR.value:
        sys.exit("error: --out_dir is required: where comparison.json and heatmap.png go")
    try:
        runs = read_runs(_RUNS.value)
        reference = leaderboard.published(_TASK.value) if _PUBLISHED.value else {}
        grid, names = evaluate_lib.comparison_grid(runs, _TASK.value, _LENGTHS.value,
                                                   reference)
    except ValueError as e:
        sys.exit(f"error: {e}")
    out = files.run_path(_OUT_DIR.value)
    out.mkdir(parents=True, exist_ok=True)
    record = {"task": _TASK.value, "lengths": _LENGTHS.value, "rows": names,
              "accuracy": [[None if np.isnan(v) else round(float(v), 2) for v in row]
                           for row in grid],
              "sources": [spec.partition("=")[::2] for spec in _RUNS.value],
              "published": "babilong_tfds.leaderboard" if reference else None}
    text = json.dumps(record, indent=2) + "\n"
    files.write_text(out / "comparison.json", text)
    evaluate_lib.draw_grid(grid, names, _LENGTHS.value, out / "heatmap.png",
                           title=_TITLE.value or f"{_TASK.value} accuracy (%)",
                           rule_before=len(runs) if reference else None)
    width = max(len(n) for n in names)
    print(" | ".join([f"{'model':<{width}}", *(f"{n:>5}" for n in _LENGTHS.value)]))
    for name, row in zip(names, grid, strict=True):
        print(" | ".join([f"{name:<{width}}",
                          *("    -" if np.isnan(v) else f"{v:5.0f}" for v in row)]))


if __name__ == "__main__":
    app.run(main)
