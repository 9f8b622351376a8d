"""The curriculum over context segments: its stages' shapes, when to move on, and the switch.

Stage i trains on contexts of up to `segments[i]` segments (config.curriculum.segments,
e.g. 1, 2, 4, 6, 8, 16, 32 as in the RMT papers). A fraction below 1 is one segment holding
that share of its tokens: short first stages (0.25, 0.5) let a small model find the facts in
a short context before the context grows. `Curriculum.stage(i)` is the one answer to what a
stage looks like (a `Stage`: the segments a sample is padded to, the context sizes drawn);
the input pipelines, the synthetic data and the training loop ask it.

A stage ends after `stage_steps` steps, or earlier when the running train accuracy reaches
`advance_accuracy` (if > 0); the last stage runs to the end of training (`advance`). The
running accuracy is an exponential moving average of the answer-token accuracy of every step
of the stage, started at 0 (so it is conservative early in a stage) and reset when a stage
begins. It is part of the `CurriculumState`, which is saved with every checkpoint as JSON,
so a resumed run takes exactly the decisions of an uninterrupted one.

`StageIterators` switches the data iterators at a stage change, the next stage's started
early in the background (`StartedIterator`).
"""

from __future__ import annotations

import dataclasses
import threading

import ml_collections


@dataclasses.dataclass(frozen=True)
class Stage:
    """What one stage trains on."""

    index: int                       # position in the curriculum
    count: float                     # the configured segment count (a fraction: part of one)
    segments: int                    # segments a sample is padded to
    context_sizes: tuple[int, ...]   # context sizes in tokens drawn for a sample


@dataclasses.dataclass(frozen=True)
class Curriculum:
    """The settings: segment counts per stage, the shapes they make, and when to move on."""

    segments: tuple[float, ...]    # segment count of each stage (a fraction < 1: part of one)
    stage_steps: int               # steps per stage (0: advance on accuracy alone)
    advance_accuracy: float = 0.0  # also advance when the running accuracy reaches this (0: off)
    accuracy_decay: float = 0.98   # EMA decay of the running accuracy
    segment_len: int = 0           # context tokens per segment (needed by `stage`)
    mix_shorter: bool = True       # draw 1..count whole segments per sample, not just count

    def __post_init__(self):
        if not self.segments or any(not s > 0 or (s > 1 and s != int(s))
                                    for s in self.segments):
            raise ValueError(f"curriculum.segments={self.segments}: expected whole segment "
                             "counts >= 1, or fractions of one segment in (0, 1)")
        if self.stage_steps < 0:
            raise ValueError(f"curriculum.stage_steps={self.stage_steps} must be >= 0")
        if self.stage_steps == 0 and self.advance_accuracy <= 0 and len(self.segments) > 1:
            raise ValueError("curriculum.stage_steps=0 and advance_accuracy=0: the curriculum "
                             "would never leave stage 0; set one of them")
        if not 0.0 <= self.accuracy_decay < 1.0:
            raise ValueError(f"curriculum.accuracy_decay={self.accuracy_decay} must lie in [0, 1)")
        if self.segment_len < 0:
            raise ValueError(f"model.segment_len={self.segment_len} must be >= 1")

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> Curriculum:
        c = config.curriculum
        return cls(segments=tuple(s if 0 < s < 1 else int(s) for s in c.segments),
                   stage_steps=int(c.stage_steps),
                   advance_accuracy=float(c.advance_accuracy),
                   accuracy_decay=float(c.get("accuracy_decay", 0.98)),
                   segment_len=int(config.model.segment_len),
                   mix_shorter=bool(c.mix_shorter))

    @property
    def num_stages(self) -> int:
        return len(self.segments)

    def stage(self, index: int) -> Stage:
        """Stage `index`: whole counts draw 1..count whole segments (exactly count without
        `mix_shorter`); a fraction f < 1 draws contexts of round(f * segment_len) tokens in
        one segment."""
        if not 0 <= index < self.num_stages:
            raise ValueError(f"curriculum stage {index} out of range: the config has "
                             f"{self.num_stages} stages")
        if self.segment_len < 1:
            raise ValueError("the curriculum has no segment_len: make it with "
                             "Curriculum.from_config(config)")
        count = self.segments[index]
        padded, sizes = stage_context(count, self.segment_len, self.mix_shorter)
        return Stage(index=index, count=count, segments=padded, context_sizes=tuple(sizes))

    def needs_accuracy(self, state: CurriculumState) -> bool:
        """Whether `advance` reads the step's accuracy (fetching it costs a device sync)."""
        return self.advance_accuracy > 0 and state.stage < self.num_stages - 1


@dataclasses.dataclass(frozen=True)
class CurriculumState:
    stage: int = 0            # index into Curriculum.segments
    stage_start: int = 0      # number of steps done when the stage began
    accuracy: float = 0.0     # running (EMA) train accuracy within the stage

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> CurriculumState:
        return cls(stage=int(d["stage"]), stage_start=int(d["stage_start"]),
                   accuracy=float(d["accuracy"]))


def advance(curriculum: Curriculum, state: CurriculumState, *, step: int,
            accuracy: float | None = None) -> CurriculumState:
    """The state after `step` steps are done, the last of which had train `accuracy`.

    `accuracy` may be None when `curriculum.needs_accuracy(state)` is False.
    """
    if state.stage >= curriculum.num_stages - 1:
        return state
    running = state.accuracy
    if curriculum.advance_accuracy > 0:
        if accuracy is None:
            raise ValueError("advance_accuracy is set: pass the step's train accuracy")
        decay = curriculum.accuracy_decay
        running = decay * running + (1.0 - decay) * float(accuracy)
    done = step - state.stage_start
    by_steps = curriculum.stage_steps > 0 and done >= curriculum.stage_steps
    by_accuracy = curriculum.advance_accuracy > 0 and running >= curriculum.advance_accuracy
    if by_steps or by_accuracy:
        return CurriculumState(stage=state.stage + 1, stage_start=step, accuracy=0.0)
    return dataclasses.replace(state, accuracy=running)


def stage_at_step(curriculum: Curriculum, step: int) -> int:
    """The stage after `step` steps when stages advance on steps alone (for planning)."""
    if curriculum.stage_steps == 0:
        return 0
    return min(step // curriculum.stage_steps, curriculum.num_stages - 1)


def stage_context(segments: float, segment_len: int, mix_shorter: bool) -> tuple[int, list[int]]:
    """(segments a sample is padded to, context sizes in tokens drawn) for one stage of
    `segments` segments (see `Curriculum.stage`)."""
    if 0 < segments < 1:
        tokens = round(segments * segment_len)
        if tokens < 1:
            raise ValueError(f"curriculum stage of {segments} segment of {segment_len} tokens "
                             "holds no token: use a larger fraction")
        return 1, [tokens]
    count = int(segments)
    counts = range(1, count + 1) if mix_shorter else [count]
    return count, [k * segment_len for k in counts]


# -- the switch of data iterators ---------------------------------------------------------
class StartedIterator:
    """A data iterator whose first batch is made in a background thread from creation on.

    Until that batch is taken, `get_state()` is the state before it, so a checkpoint in
    between resumes with the same batches as an iterator that was never started early.
    """

    def __init__(self, iterator):
        self.iterator = iterator
        self._state = iterator.get_state()  # before the first batch
        self._first = self._error = None
        self._thread = threading.Thread(target=self._fetch, daemon=True)
        self._thread.start()

    def _fetch(self) -> None:
        try:
            self._first = next(self.iterator)
        except BaseException as error:  # noqa: BLE001 - raised again in the caller's thread
            self._error = error

    def __iter__(self):
        return self

    def __next__(self):
        if self._thread is None:
            return next(self.iterator)
        self._thread.join()
        self._thread, self._state = None, None
        if self._error is not None:
            raise self._error
        batch, self._first = self._first, None
        return batch

    def get_state(self) -> dict:
        return self._state if self._thread is not None else self.iterator.get_state()

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
        _close(self.iterator)


class StageIterators:
    """The data iterator of the current curriculum stage, and the next stage's started early.

    Starting a grain iterator costs seconds (its worker processes start and make their first
    batches), which a stage change would otherwise spend with the accelerator idle. So when
    a stage begins, the next stage's iterator is created and its first batch made in the
    background (`StartedIterator`); the stage change takes it, and the old stage's iterator
    is closed in the background. The batches are the same either way: an iterator's batches
    depend on its stage and state alone. `data` is an `input_pipeline.TrainData` or a
    `synthetic_data.SyntheticData` (`.curriculum`, `.iterator(stage, state)`).
    """

    def __init__(self, data, stage: int, state: dict | None = None):
        self.data = data
        self.stages = data.curriculum.num_stages
        self.current = data.iterator(stage, state)
        self.upcoming: tuple[int, StartedIterator] | None = None
        self.closing: threading.Thread | None = None  # closes the iterators left behind
        self._prepare(stage + 1)

    def _prepare(self, stage: int) -> None:
        if stage < self.stages:
            self.upcoming = (stage, StartedIterator(self.data.iterator(stage)))

    def advance(self, stage: int):
        """Switches to `stage` (normally the next one) and returns its iterator."""
        old = [self.current]
        if self.upcoming is not None and self.upcoming[0] == stage:
            self.current = self.upcoming[1]
        else:
            old.append(self.upcoming[1] if self.upcoming else None)
            self.current = self.data.iterator(stage)
        self.upcoming = None
        self._join_closing()
        self.closing = threading.Thread(target=lambda: [_close(it) for it in old], daemon=True)
        self.closing.start()
        self._prepare(stage + 1)
        return self.current

    def _join_closing(self) -> None:
        if self.closing is not None:
            self.closing.join()
            self.closing = None

    def close(self) -> None:
        self._join_closing()
        _close(self.current)
        _close(self.upcoming[1] if self.upcoming else None)
        self.upcoming = None


def _close(iterator) -> None:
    """Stops an iterator's workers now rather than at garbage collection."""
    close = getattr(iterator, "close", None)
    if close is not None:
        close()
