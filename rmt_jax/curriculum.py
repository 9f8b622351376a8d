"""The curriculum over context segments: its stages' shapes, when to move on, and the switch.

Stage i trains on contexts of up to `segments[i]` segments (config.curriculum.segments,
e.g. 1, 2, 4, 6, 8, 16, 32 as in the RMT papers). A fraction below 1 is one segment holding
that share of its tokens: short first stages (0.25, 0.5) let a small model find the facts in
a short context before the context grows. A 0 is the bare story (0k: the facts with no book
text) in one segment, only stories whose facts fit it drawn: the plain lookup first, before
any distractor text. `story_questions[i]` > 0 ends stage i's simulated stories after that
many questions: shorter stories (qa1 asks one every two statements, so 1 gives two-fact
stories, where the answer is found by the person's name alone, with no recency to learn).
`Curriculum.stage(i)` is the one answer to what a stage looks like (a `Stage`: the segments
a sample is padded to, the context sizes drawn, the story length); the input pipelines, the
synthetic data and the training loop ask it.

A stage ends after `stage_steps` steps, or earlier when the running train accuracy reaches
`advance_accuracy` (if > 0); the last stage runs to the end of training (`advance`). The
running accuracy is an exponential moving average of the answer-token accuracy of every step
of the stage, started at 0 (so it is conservative early in a stage) and reset when a stage
begins. It is part of the `CurriculumState`, which is saved with every checkpoint as JSON,
so a resumed run takes exactly the decisions of an uninterrupted one.

With `advance_on='heldout'` a stage instead trains until the exact match on a held-out set
of the stage (rmt_jax.early_stopping) stops improving: every `eval_every` steps of the stage
an evaluation either beats the stage's best score by more than `min_delta` or counts
towards `patience`; after `patience` evaluations without improvement, or `max_stage_steps`
steps, the stage ends, the best state of the stage is restored and the next stage starts
from it (the last stage ending ends the run). This follows the official RMT BABILong
fine-tuning (early stopping, each stage from the best checkpoint of the one before).
`record_heldout` makes these decisions from a score; the best step, best score and
evaluations without improvement are in the `CurriculumState` (and so in every checkpoint).

`mixed_length_ratio` r > 0 makes round(r * batch) rows of every batch contexts of the
earlier stages' lengths (`Stage.shorter_sizes`), the other rows the stage's own length. The
official code's flag of that name draws a sample at the stage's longest length with
probability r and otherwise uniformly among all the stage's lengths (its comment says "prob
for shorter samples"); here the share is the shorter rows', exact in every batch, and
`mix_shorter` (the official `vary_n_segments`) is the way to draw all lengths uniformly.
`bare_share` s > 0 draws bare stories (0k, in one segment) as a share s of the batches of
every stage of whole segments (of the samples, without `same_length_batches`), the stage's
own sizes sharing the rest equally: the plain lookup stays in training once book text and
memory come in, and every story drawn then has facts that fit one segment. The running
accuracy counts those easier batches too, so such a stage reaches `advance_accuracy` sooner.
`same_length_batches` draws that count once per global batch instead of once per sample,
and the batch is only as wide as its count: the same lengths in expectation, at about half
the compute of a stage of many segments (a batch padded to the stage's longest length runs
every segment, empty ones too). Each width compiles once, the next stage's ahead of time.

`StageIterators` switches the data iterators at a stage change, the next stage's started
early in the background (`StartedIterator`); `AheadOfTime` compiles the next stage's programs
in the background, for the batch shapes `stage_batch` gives.
"""

from __future__ import annotations

import dataclasses
import threading

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding

ADVANCE_ON = ("steps", "heldout")


@dataclasses.dataclass(frozen=True)
class Stage:
    """What one stage trains on."""

    index: int                       # position in the curriculum
    count: float                     # the configured segment count (a fraction: part of one)
    segments: int                    # segments a sample is padded to
    context_sizes: tuple[int, ...]   # context sizes in tokens drawn for a sample
    context_len: int = 0             # tokens a sample's context is padded to
    shorter_sizes: tuple[int, ...] = ()  # earlier stages' sizes, for `shorter_rows` rows
    shorter_rows: int = 0            # rows of a batch drawn at shorter_sizes
    story_questions: int = 0         # simulated stories end after this many questions (0: own)
    # one context size per global batch, the batch padded to it (same_length_batches)
    size_per_batch: bool = False
    size_weights: tuple[float, ...] = ()  # share of each of context_sizes (): equal shares
    story_tokens: int = 0            # most tokens of a drawn story's facts
    bare_len: int = 0                # tokens a bare story is padded to: one segment's context

    def padded_len(self, size: int) -> int:
        """Tokens a context of `size` drawn in this stage is padded to: the stage's longest,
        or with `size_per_batch` its own size (a bare story: one segment)."""
        if not self.size_per_batch:
            return self.context_len
        return size or self.bare_len


@dataclasses.dataclass(frozen=True)
class Curriculum:
    """The settings: segment counts per stage, the shapes they make, and when to move on."""

    segments: tuple[float, ...]    # segment count of each stage (a fraction < 1: part of one)
    stage_steps: int               # steps per stage (0: advance on accuracy alone)
    advance_accuracy: float = 0.0  # also advance when the running accuracy reaches this (0: off)
    accuracy_decay: float = 0.98   # EMA decay of the running accuracy
    segment_len: int = 0           # context tokens per segment (needed by `stage`)
    mix_shorter: bool = True       # draw 1..count whole segments per sample, not just count
    same_length_batches: bool = False  # with mix_shorter: one count per batch, padded to it
    batch_size: int = 0            # rows of a batch (needed by `stage` for shorter_rows)
    advance_on: str = "steps"      # 'steps' (stage_steps, advance_accuracy) | 'heldout'
    eval_every: int = 0            # heldout: steps of a stage between held-out evaluations
    patience: int = 0              # heldout: evaluations without improvement that end a stage
    min_delta: float = 0.0         # heldout: an improvement beats the best by more than this
    heldout_samples: int = 0       # heldout: samples of a stage's held-out set
    max_stage_steps: int = 0       # heldout: most steps of a stage
    mixed_length_ratio: float = 0.0  # share of each batch at the earlier stages' lengths
    reserved: int = 0              # tokens of the last segment kept for question and answer
    # per stage: simulated stories end after at most this many questions (qa1 asks one every
    # two statements, so 1 gives two-fact stories); 0 or () for the tasks' own lengths
    story_questions: tuple[int, ...] = ()
    # share of the batches of every stage of whole segments that are bare stories (0: none)
    bare_share: float = 0.0

    def __post_init__(self):
        if not self.segments or any(s < 0 or (s > 1 and s != int(s))
                                    for s in self.segments):
            raise ValueError(f"curriculum.segments={self.segments}: expected whole segment "
                             "counts >= 1, fractions of one segment in (0, 1), or 0 (the "
                             "bare story in one segment)")
        if self.stage_steps < 0:
            raise ValueError(f"curriculum.stage_steps={self.stage_steps} must be >= 0")
        if self.advance_on not in ADVANCE_ON:
            raise ValueError(f"curriculum.advance_on={self.advance_on!r}: expected one of "
                             f"{', '.join(map(repr, ADVANCE_ON))}")
        if self.advance_on == "heldout":
            for name in ("eval_every", "patience", "heldout_samples", "max_stage_steps"):
                if getattr(self, name) < 1:
                    raise ValueError(f"curriculum.{name}={getattr(self, name)} must be >= 1 "
                                     "with advance_on='heldout'")
            if self.min_delta < 0:
                raise ValueError(f"curriculum.min_delta={self.min_delta} must be >= 0")
        elif (self.stage_steps == 0 and self.advance_accuracy <= 0
              and len(self.segments) > 1):
            raise ValueError("curriculum.stage_steps=0 and advance_accuracy=0: the curriculum "
                             "would never leave stage 0; set one of them")
        if not 0.0 <= self.accuracy_decay < 1.0:
            raise ValueError(f"curriculum.accuracy_decay={self.accuracy_decay} must lie in [0, 1)")
        if self.segment_len < 0:
            raise ValueError(f"model.segment_len={self.segment_len} must be >= 1")
        if self.reserved < 0 or (self.segment_len and self.reserved >= self.segment_len):
            raise ValueError(
                f"the question and answer slots (data.max_question_len + data.max_answer_len "
                f"= {self.reserved} tokens) leave no context token in a segment of "
                f"{self.segment_len}: lower them, raise model.segment_len, or set "
                "curriculum.whole_segments=False")
        if self.story_questions and (
                len(self.story_questions) != len(self.segments)
                or any(isinstance(q, bool) or not isinstance(q, int) or q < 0
                       for q in self.story_questions)):
            raise ValueError(f"curriculum.story_questions={self.story_questions}: expected one "
                             f"integer >= 0 per stage ({len(self.segments)} stages, as "
                             "curriculum.segments has; 0: the tasks' own story length), or () "
                             "for none")
        if not 0.0 <= self.mixed_length_ratio < 1.0:
            raise ValueError(f"curriculum.mixed_length_ratio={self.mixed_length_ratio} must "
                             "lie in [0, 1)")
        if self.mixed_length_ratio > 0 and self.mix_shorter:
            raise ValueError(f"curriculum.mixed_length_ratio={self.mixed_length_ratio} mixes "
                             "the earlier stages' lengths into each batch, while "
                             "curriculum.mix_shorter=True already draws every sample's "
                             "segment count from 1..the stage's: set "
                             "--config.curriculum.mix_shorter=False with it")
        if not 0.0 <= self.bare_share < 1.0:
            raise ValueError(f"curriculum.bare_share={self.bare_share} must lie in [0, 1) "
                             "(the share of a stage's batches that are bare stories)")
        if self.same_length_batches and not self.mix_shorter:
            raise ValueError("curriculum.same_length_batches=True draws one segment count per "
                             "batch from 1..the stage's, which needs "
                             "curriculum.mix_shorter=True (without it every sample of a stage "
                             "already has the same length): set one of them back")

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> Curriculum:
        c = config.curriculum
        return cls(segments=tuple(s if 0 < s < 1 else int(s) for s in c.segments),
                   stage_steps=int(c.stage_steps),
                   advance_accuracy=float(c.advance_accuracy),
                   accuracy_decay=float(c.get("accuracy_decay", 0.98)),
                   segment_len=int(config.model.segment_len),
                   mix_shorter=bool(c.mix_shorter),
                   # configs saved before the option: per-sample lengths
                   same_length_batches=bool(c.get("same_length_batches", False)),
                   batch_size=int(config.train.batch_size),
                   # configs saved before these fields: today's step-based curriculum
                   advance_on=str(c.get("advance_on", "steps")),
                   eval_every=int(c.get("eval_every", 0)),
                   patience=int(c.get("patience", 0)),
                   min_delta=float(c.get("min_delta", 0.0)),
                   heldout_samples=int(c.get("heldout_samples", 0)),
                   max_stage_steps=int(c.get("max_stage_steps", 0)),
                   mixed_length_ratio=float(c.get("mixed_length_ratio", 0.0)),
                   reserved=reserved_tokens(config),
                   story_questions=tuple(c.get("story_questions", ())),
                   # configs saved before the option: no bare stories past the bare stages
                   bare_share=float(c.get("bare_share", 0.0)))

    @property
    def num_stages(self) -> int:
        return len(self.segments)

    def stage(self, index: int) -> Stage:
        """Stage `index`: whole counts draw 1..count whole segments (exactly count without
        `mix_shorter`); a fraction f < 1 draws contexts of round(f * segment_len) tokens in
        one segment; 0 draws bare stories (context size 0) in one segment. With `reserved`
        tokens, k segments hold k * segment_len - reserved context tokens, the question and
        answer slots taking the rest of the last."""
        if not 0 <= index < self.num_stages:
            raise ValueError(f"curriculum stage {index} out of range: the config has "
                             f"{self.num_stages} stages")
        if self.segment_len < 1:
            raise ValueError("the curriculum has no segment_len: make it with "
                             "Curriculum.from_config(config)")
        count = self.segments[index]
        padded, sizes = stage_context(count, self.segment_len, self.mix_shorter, self.reserved)
        weights = ()
        if self.bare_share > 0 and count >= 1:  # bare stories as a share of the stage
            weights = (self.bare_share,) + ((1 - self.bare_share) / len(sizes),) * len(sizes)
            sizes = [0, *sizes]
        bare_len = self.segment_len - self.reserved
        context_len = padded * self.segment_len - self.reserved
        shorter, rows = (), 0
        if self.mixed_length_ratio > 0 and index > 0:
            shorter = tuple(sorted({max(stage_context(s, self.segment_len, False,
                                                      self.reserved)[1])
                                    for s in self.segments[:index]} - set(sizes)))
            rows = round(self.mixed_length_ratio * self.batch_size) if shorter else 0
        return Stage(index=index, count=count, segments=padded, context_sizes=tuple(sizes),
                     context_len=context_len,
                     shorter_sizes=shorter, shorter_rows=rows,
                     story_questions=(self.story_questions[index] if self.story_questions
                                      else 0),
                     size_per_batch=self.same_length_batches and len(sizes) > 1,
                     size_weights=weights,
                     # a bare story must fit one segment (at every size then: the same story
                     # pool for all of them)
                     story_tokens=bare_len if 0 in sizes else context_len,
                     bare_len=bare_len)

    def needs_accuracy(self, state: CurriculumState) -> bool:
        """Whether `advance` reads the step's accuracy (fetching it costs a device sync)."""
        return (self.advance_on == "steps" and self.advance_accuracy > 0
                and state.stage < self.num_stages - 1)


@dataclasses.dataclass(frozen=True)
class CurriculumState:
    stage: int = 0            # index into Curriculum.segments
    stage_start: int = 0      # number of steps done when the stage began
    accuracy: float = 0.0     # running (EMA) train accuracy within the stage
    # advance_on='heldout':
    best_score: float | None = None  # the stage's best held-out exact match so far
    best_step: int = -1       # the step of that evaluation (its state is saved apart)
    stale: int = 0            # evaluations since then without improvement
    evaluated: int = -1       # the step of the newest held-out evaluation
    finished: bool = False    # the last stage has ended: training is over

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> CurriculumState:
        best = d.get("best_score")  # absent in checkpoints from before advance_on
        return cls(stage=int(d["stage"]), stage_start=int(d["stage_start"]),
                   accuracy=float(d["accuracy"]),
                   best_score=None if best is None else float(best),
                   best_step=int(d.get("best_step", -1)), stale=int(d.get("stale", 0)),
                   evaluated=int(d.get("evaluated", -1)),
                   finished=bool(d.get("finished", False)))


def advance(curriculum: Curriculum, state: CurriculumState, *, step: int,
            accuracy: float | None = None) -> CurriculumState:
    """The state after `step` steps are done, the last of which had train `accuracy`.

    `accuracy` may be None when `curriculum.needs_accuracy(state)` is False.
    """
    if state.stage >= curriculum.num_stages - 1 or curriculum.advance_on != "steps":
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


@dataclasses.dataclass(frozen=True)
class Decision:
    """What a held-out evaluation decided (`record_heldout`)."""

    improved: bool       # a new best: save the current state as the stage's best
    restore_step: int    # restore the best state saved at this step now (-1: nothing to do)
    stage_ended: bool    # the stage is over (patience or max_stage_steps)
    best_score: float    # the stage's best score and its step, after this evaluation
    best_step: int
    stale: int           # evaluations without improvement, after this one


def heldout_due(curriculum: Curriculum, state: CurriculumState, step: int, *,
                last: bool = False) -> bool:
    """Whether the state after `step` steps is to be evaluated on the held-out set: every
    `eval_every` steps of a stage, at `max_stage_steps`, and at the end of training (`last`).
    An evaluation that a preemption skipped is due again when the run resumes."""
    if curriculum.advance_on != "heldout" or state.finished or state.evaluated == step:
        return False
    done = step - state.stage_start
    return done > 0 and (done % curriculum.eval_every == 0
                         or done >= curriculum.max_stage_steps or last)


def record_heldout(curriculum: Curriculum, state: CurriculumState, *, step: int,
                   score: float, last: bool = False) -> tuple[CurriculumState, Decision]:
    """The state and decision after the held-out evaluation of the state after `step` steps.

    A stage ends after `patience` evaluations without improvement or `max_stage_steps`
    steps: its best state is restored and the next stage begins (the last stage: the run is
    finished). At the end of training (`last`) the best state is restored too.
    """
    improved = state.best_score is None or score > state.best_score + curriculum.min_delta
    state = dataclasses.replace(
        state, evaluated=step, stale=0 if improved else state.stale + 1,
        best_score=float(score) if improved else state.best_score,
        best_step=step if improved else state.best_step)
    ended = (state.stale >= curriculum.patience
             or step - state.stage_start >= curriculum.max_stage_steps)
    restore = state.best_step if (ended or last) and state.best_step != step else -1
    decision = Decision(improved=improved, restore_step=restore, stage_ended=ended,
                        best_score=state.best_score, best_step=state.best_step,
                        stale=state.stale)
    if ended:
        if state.stage < curriculum.num_stages - 1:
            state = CurriculumState(stage=state.stage + 1, stage_start=step, evaluated=step)
        else:
            state = dataclasses.replace(state, finished=True)
    return state, decision


def reserved_tokens(config: ml_collections.ConfigDict) -> int:
    """Tokens of a sample's last segment that the question and answer slots take in the
    'in_context' answer mode when `curriculum.whole_segments` is set (a stage of k segments
    is then k segments in all, as the official fine-tuning counts them); else 0, and the
    question and answer come after the stage's k segments of context."""
    # configs saved before the option: the context alone filled the k segments
    if not config.curriculum.get("whole_segments", False):
        return 0
    return question_slots(config)


def question_slots(config: ml_collections.ConfigDict) -> int:
    """Tokens the question and answer slots take at the end of a sample's last segment in the
    'in_context' answer mode (max_question_len + max_answer_len); 0 in 'separate' mode."""
    if config.model.get("answer_mode", "separate") != "in_context":
        return 0
    return int(config.data.max_question_len + config.data.max_answer_len)


def stage_context(segments: float, segment_len: int, mix_shorter: bool,
                  reserved: int = 0) -> tuple[int, list[int]]:
    """(segments a sample is padded to, context sizes in tokens drawn) for one stage of
    `segments` segments (see `Curriculum.stage`); `reserved` tokens of the last segment are
    not context."""
    if segments == 0:  # the bare story, padded to one segment
        return 1, [0]
    if 0 < segments < 1:
        tokens = round(segments * (segment_len - reserved))
        if tokens < 1:
            raise ValueError(f"curriculum stage of {segments} segment of {segment_len} tokens "
                             "holds no token: use a larger fraction")
        return 1, [tokens]
    count = int(segments)
    counts = range(1, count + 1) if mix_shorter else [count]
    return count, [k * segment_len - reserved for k in counts]


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


# -- the next stage's programs, compiled early --------------------------------------------
class AheadOfTime:
    """A jitted `fn(first, batch, *rest)` compiled once per batch shape, ahead of time on
    request (`rest`: arguments of fixed shape, as a traced scalar; `prepare` takes their
    shape structs).

    A curriculum stage change brings new batch shapes, which `jax.jit` would compile at the
    first call while the accelerator waits. `prepare(first, *batch_structs)` compiles the
    next stage's shapes (one, or each width of a stage with `same_length_batches`) one after
    the other in a background thread while the current stage trains; a call finds the
    executable ready (or waits for that shape's compile, or compiles then, as jit would).
    The programs are the ones jit would build: same lowering, same in/out shardings and
    donation.
    """

    def __init__(self, jitted):
        self.jitted = jitted
        self.ready: dict[tuple, jax.stages.Compiled] = {}
        self.pending: dict[tuple, threading.Event] = {}  # set once that shape is compiled
        self.threads: list[threading.Thread] = []

    @staticmethod
    def key(batch: dict) -> tuple:
        return tuple((k, tuple(v.shape), str(v.dtype)) for k, v in sorted(batch.items()))

    def prepare(self, first, *batches: dict, rest: tuple = ()) -> None:
        """Compiles each batch shape not compiled yet, one after the other in one thread."""
        todo = {}
        for batch in batches:
            key = self.key(batch)
            if key not in self.ready and key not in self.pending:
                todo[key] = batch
        if todo:
            events = {key: threading.Event() for key in todo}
            self.pending.update(events)
            thread = threading.Thread(target=self._compile, args=(todo, events, first, rest),
                                      daemon=True)
            self.threads.append(thread)
            thread.start()

    def _compile(self, todo: dict, events: dict, first, rest: tuple) -> None:
        for key, batch in todo.items():
            try:
                self.ready[key] = self.jitted.lower(first, batch, *rest).compile()
            except Exception as error:  # noqa: BLE001 - the call compiles again and raises
                logging.warning("compiling ahead of time failed (%s); compiling at first use",
                                error)
            finally:
                events[key].set()

    def wait(self) -> None:
        """Waits for the background compiles (a thread inside XLA must not outlive Python)."""
        for thread in list(self.threads):
            thread.join()

    def __call__(self, first, batch: dict, *rest):
        key = self.key(batch)
        program = self.ready.get(key)
        if program is None or key in self.pending:
            done = self.pending.pop(key, None)
            if done is not None:
                done.wait()  # returns at once if that shape's compile has finished
            program = self.ready.get(key)
            if program is None:
                program = self.ready[key] = self.jitted.lower(first, batch, *rest).compile()
        return program(first, batch, *rest)


def stage_batch(batch: dict, context_len: int, batch_sharding: NamedSharding) -> dict:
    """Shape structs of the global arrays `sharding.global_batch(batch, batch_sharding)` would
    make from this process's numpy `batch`, with the context resized to `context_len` tokens."""
    rows = len(batch["context"]) * jax.process_count()
    structs = {}
    for k, v in batch.items():
        v = np.asarray(v)
        shape = (rows, context_len) if k in ("context", "context_mask") else (rows, *v.shape[1:])
        structs[k] = jax.ShapeDtypeStruct(shape, jax.dtypes.canonicalize_dtype(v.dtype),
                                          sharding=batch_sharding)
    return structs
