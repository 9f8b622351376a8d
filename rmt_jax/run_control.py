"""When the training loop acts, and when it stops: `periodic`, `StopSignal`, `stop_point`,
`check_finite`.

- `periodic(step, every, last=...)`: whether a periodic action (log, checkpoint,
  evaluation) runs after `step` steps.
- `StopSignal`: SIGTERM (a preemption) becomes a flag that the loop reads after each step;
  inside `StopSignal.interruptible()` (an evaluation, which may take minutes) the next
  `stop_point()` (evaluation loops call it before each batch) raises `Preempted` instead,
  so the loop can save a checkpoint within the grace period. The signal handler itself only
  sets the flag: an exception raised from it lands between any two bytecodes of the main
  thread, inside jax's dispatch or a lock's critical section, and left runs that never
  saved (a lock held) or crashed at exit (SIGSEGV).
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
    `interruptible()` (an evaluation, which may take minutes) `stop_point()` raises
    `Preempted` once it is set."""

    def __init__(self):
        self.received = False
        self._interruptible = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        # A flag and nothing else: see the module docstring for why this never raises.
        self.received = True

    @contextlib.contextmanager
    def interruptible(self):
        """`stop_point()` raises `Preempted` inside once SIGTERM has arrived (one process
        only: several would leave each other waiting in a collective)."""
        global _active
        self._interruptible = jax.process_count() == 1
        outer, _active = _active, self
        try:
            self.check()  # arrived just before: stop at once
            yield
        finally:
            self._interruptible = False
            _active = outer

    def check(self) -> None:
        """Raises `Preempted` inside `interruptible()` once SIGTERM has arrived."""
        if self._interruptible and self.received:
            self._interruptible = False
            logging.warning("SIGTERM during evaluation: stopping it to save a checkpoint")
            raise Preempted

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


_active: StopSignal | None = None  # the StopSignal inside interruptible(), if any


def stop_point() -> None:
    """Raises `Preempted` when SIGTERM arrived during an interruptible evaluation; loops of
    evaluation code call it before each batch (a no-op outside a training run)."""
    if _active is not None:
        _active.check()


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
