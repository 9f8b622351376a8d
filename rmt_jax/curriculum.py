"""The curriculum over context segments: pure functions over a small, JSON-able state.

Stage i trains on contexts of up to `segments[i]` segments (config.curriculum.segments,
e.g. 1, 2, 4, 6, 8, 16, 32 as in the RMT papers). A fraction below 1 is one segment holding
that share of its tokens: short first stages (0.25, 0.5) let a small model find the facts in
a short context before the context grows (`stage_context`). A stage ends after `stage_steps` steps,
or earlier when the running train accuracy reaches `advance_accuracy` (if > 0); the last
stage runs to the end of training.

The running accuracy is an exponential moving average of the answer-token accuracy of
every step of the stage, started at 0 (so it is conservative early in a stage) and reset
when a stage begins. It is part of the state, and the state is saved with every
checkpoint as JSON, so a resumed run takes exactly the decisions of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses

import ml_collections


@dataclasses.dataclass(frozen=True)
class Curriculum:
    """The settings: segment counts per stage and when to move on."""

    segments: tuple[float, ...]    # segment count of each stage (a fraction < 1: part of one)
    stage_steps: int               # steps per stage (0: advance on accuracy alone)
    advance_accuracy: float = 0.0  # also advance when the running accuracy reaches this (0: off)
    accuracy_decay: float = 0.98   # EMA decay of the running accuracy

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

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> Curriculum:
        c = config.curriculum
        return cls(segments=tuple(s if 0 < s < 1 else int(s) for s in c.segments),
                   stage_steps=int(c.stage_steps),
                   advance_accuracy=float(c.advance_accuracy),
                   accuracy_decay=float(c.get("accuracy_decay", 0.98)))

    @property
    def num_stages(self) -> int:
        return len(self.segments)

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
    """(segments a sample is padded to, context sizes in tokens drawn) for one stage.

    Whole counts draw 1..segments whole segments (or exactly `segments` without
    `mix_shorter`); a fraction f < 1 draws contexts of round(f * segment_len) tokens in one
    segment.
    """
    if 0 < segments < 1:
        tokens = round(segments * segment_len)
        if tokens < 1:
            raise ValueError(f"curriculum stage of {segments} segment of {segment_len} tokens "
                             "holds no token: use a larger fraction")
        return 1, [tokens]
    count = int(segments)
    counts = range(1, count + 1) if mix_shorter else [count]
    return count, [k * segment_len for k in counts]
