"""Where the training loop's scalars go: TensorBoard, workdir/metrics.jsonl and the log.

`MetricWriter(workdir).write(step, scalars)` writes on process 0 only: one JSON line
{'step': s, name: value, ...} to workdir/metrics.jsonl, the scalars to TensorBoard through
tensorboardX (workdir/tensorboard, on the schemes it can write), and one log line, which may
carry the run's progress ('12/100, ETA 3m05s', `Pace`).
"""

from __future__ import annotations

import json
import os
import time

import jax
from absl import logging

from rmt_jax import files

METRICS_FILE = "metrics.jsonl"
# tensorboardX writes local folders, gs:// (google-cloud-storage) and s3:// (boto3).
TENSORBOARD_SCHEMES = (None, "gs", "s3")


class MetricWriter:
    """Scalars to TensorBoard (tensorboardX), workdir/metrics.jsonl and the log; process 0.

    workdir: an `epath.Path`. A local metrics.jsonl is appended to; a remote one (object
    stores have no append) is rewritten whole at each write, atomically."""

    def __init__(self, workdir):
        self.active = jax.process_index() == 0
        self.tb = None
        self.path = workdir / METRICS_FILE
        self.remote = files.is_remote(workdir)
        self.lines: list[str] = []
        if not self.active:
            return
        if self.remote and self.path.exists():
            self.lines = self.path.read_text().splitlines()
        if files.scheme(workdir) not in TENSORBOARD_SCHEMES:
            logging.warning("tensorboardX cannot write to %s: metrics go to %s and the log "
                            "only", workdir, self.path)
            return
        try:
            from tensorboardX import SummaryWriter
            self.tb = SummaryWriter(os.fspath(workdir / "tensorboard"))
        except Exception as error:  # noqa: BLE001 - metrics still reach the file and the log
            logging.warning("no TensorBoard events (%s: %s): metrics go to %s and the log "
                            "only", type(error).__name__, error, self.path)

    def write(self, step: int, scalars: dict[str, float], *, progress: str = "") -> None:
        """Logs and stores `scalars`; `progress` ('12/100, ETA 3m') goes to the log only."""
        if not self.active:
            return
        scalars = {k: float(v) for k, v in scalars.items()}
        logging.info("step %s: %s", progress or step,
                     ", ".join(f"{k} {v:.4g}" for k, v in sorted(scalars.items())))
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        line = json.dumps({"step": step, **scalars})
        if self.remote:
            self.lines.append(line)
            files.write_text(self.path, "\n".join(self.lines) + "\n")
        else:
            with open(os.fspath(self.path), "a") as f:
                f.write(line + "\n")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def format_duration(seconds: float) -> str:
    """'45s', '12m05s', '3h20m'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Pace:
    """The run's progress for the log line, its ETA at the pace since the first log."""

    def __init__(self, num_steps: int):
        self.num_steps = num_steps
        self.start: tuple[int, float] | None = None  # (step, time) of the first log

    def progress(self, step: int, window_steps: int, window_start: float) -> str:
        """'12/100, ETA 3m05s': at the first log, the pace of the `window_steps` steps since
        `window_start` (perf_counter); later, since the first log (evaluations included)."""
        now = time.perf_counter()
        if self.start is None or step <= self.start[0]:
            self.start = (step, now)
            rate = window_steps / max(now - window_start, 1e-9)
        else:
            rate = (step - self.start[0]) / max(now - self.start[1], 1e-9)
        return f"{step}/{self.num_steps}, ETA {format_duration((self.num_steps - step) / rate)}"
