"""When the training loop acts, and when it stops: `periodic`, `StopSignal`, `check_finite`.

- `periodic(step, every, last=...)`: whether a periodic action (log, checkpoint,
  evaluation) runs after `step` steps.
- `StopSignal`: SIGTERM (a preemption) becomes a flag that the loop reads after each step;
  inside `StopSignal.interruptible()` (an evaluation, which may take minutes) it raises
  `Preempted` instead, so the loop can save a checkpoint within the grace period.
- `check_finite(pending, last_saved)`: the losses of the steps since the last check, fetched
  together (one device sync), raise a FloatingPointError at the first non-finite one, before
  anything is saved from it.
"""

from __future__ import annotations

import contextlib
import signal
import threading

import jax
import numpy as np
from absl import logging


def periodic(step: int, every: int, *, last: bool = False) -> bool:
    """Whether a periodic action runs at `step`: every `every` steps (never for every <= 0)
    and at the last step."""
    return last or (every > 0 and step % every == 0)


class Preempted(Exception):
    """SIGTERM arrived during an interruptible phase (an evaluation)."""


class StopSignal:
    """Turns SIGTERM into a flag that the loop reads after each step; inside
    `interruptible()` (an evaluation, which may take minutes) it raises `Preempted`."""

    def __init__(self):
        self.received = False
        self._interruptible = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.received = True
        if self._interruptible:
            self._interruptible = False
            logging.warning("SIGTERM during evaluation: stopping it to save a checkpoint")
            raise Preempted
        logging.warning("SIGTERM: saving a checkpoint after this step, then stopping")

    @contextlib.contextmanager
    def interruptible(self):
        """SIGTERM raises `Preempted` inside (one process only: several would leave each
        other waiting in a collective)."""
        self._interruptible = jax.process_count() == 1
        try:
            if self._interruptible and self.received:  # arrived just before: stop at once
                raise Preempted
            yield
        finally:
            self._interruptible = False

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def check_finite(pending: list[tuple[int, jax.Array]], last_saved: int | None) -> None:
    """Raises on the first non-finite loss among steps not yet checked; clears the list.

    pending: (step, loss) of the steps since the last check; last_saved: the step of the
    newest checkpoint (None: none yet), named in the error."""
    losses = jax.device_get([loss for _, loss in pending])
    for (step, _), loss in zip(pending, losses, strict=True):
        if not np.isfinite(loss):
            good = ("no checkpoint was saved yet" if last_saved is None
                    else f"the last good checkpoint is step {last_saved}")
            raise FloatingPointError(
                f"non-finite loss ({loss}) at step {step}: stopping without saving; {good}. "
                "Lower optim.learning_rate or check the data, then resume")
    pending.clear()
