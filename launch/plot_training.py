r"""A training run's curve: loss and accuracy by step, the curriculum's stage changes marked.

    python -m launch.plot_training --workdir=/tmp/rmt_qa1_cpu --out=results/qa1_cpu/curve.png
    python -m launch.plot_training --metrics=a.jsonl,b.jsonl --out=curve.png   # resumed pieces

Reads `metrics.jsonl` (rmt_jax.metric_writer: one JSON line of scalars per log step) and
draws two panels: the train loss (answer and end-of-answer tokens), and the running train
accuracy with every held-out evaluation during training (`eval/<task>/<length>/accuracy`,
one line per length). Dashed vertical lines mark where `train/stage` changes, labelled with
the stage's segment count (`train/segments`; 0 is the bare-story stage). Several files are
read in order, a later line for a step replacing an earlier one (a resumed run appends the
steps it redid after its checkpoint).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from absl import app, flags

from rmt_jax.files import atomic_write

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line's flags (defined when run as a script only: other launchers that a
    process imports beside this module define flags of the same names)."""
    flags.DEFINE_string("workdir", None, "training workdir holding metrics.jsonl")
    flags.DEFINE_list("metrics", [], "metrics.jsonl files, in order (instead of --workdir)")
    flags.DEFINE_string("out", None, "PNG to write", required=True)
    flags.DEFINE_string("title", None, "figure title (default: the workdir's name)")

EVAL_KEY = re.compile(r"^eval/(?P<task>[^/]+)/(?P<length>[^/]+)/accuracy$")


def read_metrics(paths) -> dict[int, dict]:
    """{step: scalars} merged over `paths` in order (a later file's step wins)."""
    steps: dict[int, dict] = {}
    for path in paths:
        for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                step = int(row["step"])
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{path}:{n} is not a metrics line ({error}): expected JSON "
                                 "with a 'step', as rmt_jax.metric_writer writes") from None
            steps.setdefault(step, {}).update(row)
    return dict(sorted(steps.items()))


def stage_changes(rows: dict[int, dict]) -> list[tuple[int, int, float]]:
    """[(first logged step, stage, segments)] of every stage the log shows."""
    out, last = [], None
    for step, row in rows.items():
        stage = row.get("train/stage")
        if stage is None or stage == last:
            continue
        out.append((step, int(stage), float(row.get("train/segments", float("nan")))))
        last = stage
    return out


def plot(rows: dict[int, dict], path: str | Path, *, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(s, r) for s, r in rows.items() if "train/loss" in r]
    if not train:
        raise ValueError("no train/loss in the metrics: nothing to plot")
    fig, (ax_loss, ax_acc) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    steps = [s for s, _ in train]
    ax_loss.plot(steps, [r["train/loss"] for _, r in train], lw=1, color="tab:red")
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("train loss")
    ax_acc.plot(steps, [r["train/accuracy"] for _, r in train], lw=1, color="black",
                label="train accuracy (answer + end token)")
    evals: dict[str, list[tuple[int, float]]] = {}
    for step, row in rows.items():
        for key, value in row.items():
            m = EVAL_KEY.match(key)
            if m:
                evals.setdefault(f"{m['task']} {m['length']}", []).append((step, value))
    for name, points in evals.items():
        ax_acc.plot(*zip(*points, strict=True), marker="o", ms=3, lw=1,
                    label=f"test accuracy {name}")
    ax_acc.set_ylim(0, 1.02)
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_xlabel("step")
    for step, stage, segments in stage_changes(rows)[1:]:
        for ax in (ax_loss, ax_acc):
            ax.axvline(step, color="grey", ls="--", lw=0.8)
        label = "bare" if segments == 0 else f"{segments:g} seg"
        ax_acc.text(step, 1.0, f"stage {stage}: {label} ", rotation=90, fontsize=7,
                    va="top", ha="right", color="grey")
    ax_acc.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def main(argv):
    del argv
    if bool(FLAGS.workdir) == bool(FLAGS.metrics):
        raise app.UsageError("give --workdir or --metrics (one of them)")
    paths = FLAGS.metrics or [Path(FLAGS.workdir) / "metrics.jsonl"]
    for p in paths:
        if not Path(p).is_file():
            raise app.UsageError(f"no metrics file at {p}: point --workdir at a training "
                                 "workdir, or --metrics at its metrics.jsonl")
    default = Path(FLAGS.workdir) if FLAGS.workdir else Path(paths[0]).absolute().parent
    title = FLAGS.title if FLAGS.title is not None else default.name
    plot(read_metrics(paths), FLAGS.out, title=title)
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
