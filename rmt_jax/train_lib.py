"""Training RMT / RMT-R on BABILong: `train_and_evaluate(config, workdir)`, one loop.

One run is a `TrainingRun`, set up phase by phase (banners below): a device mesh
('data' x 'model'); the input (`input_pipeline.TrainData`, or `synthetic_data.SyntheticData`
with config.data.synthetic) per curriculum stage; the model and AdamW; parameters and
optimizer state sharded over the mesh and restored; a jitted, donated update step. Its loop
(`TrainingRun.train`) then steps, advances the curriculum, logs, saves checkpoints
(rmt_jax.checkpointing) and evaluates (rmt_jax.scoring), each when `run_control.periodic`
says so.

The train state (rmt_jax.train_state) is a plain pytree, updated by a pure jitted function:
{'params', 'opt_state', 'step', 'rng'}.

Sharding (rmt_jax.sharding): the batch over 'data'; parameters, and their optimizer
moments, over 'model' where divisible (Megatron style), else replicated.

Reproducibility: batch i of a stage depends on the config and the iterator state alone,
dropout keys are fold_in(rng, step), the curriculum state is a few numbers, and all of it
is in every checkpoint, so a run killed and resumed ends with bitwise the same parameters
(on CPU) as one that was not. A non-finite loss raises before anything is saved from it.

Resuming: the run's config is checked against the workdir's before anything is written
(`checkpointing.check_config_change`: a changed field stops the run unless it is named in
`allow_config_change`; parameter shapes never change). The workdir is an `etils.epath`
path: `gs://...` stays remote (rmt_jax.files).

Curriculum (rmt_jax.curriculum): stages advance on steps (or the running train accuracy), or
with `curriculum.advance_on='heldout'` on a held-out set's exact match with early stopping
(rmt_jax.early_stopping): the held-out evaluation of step s runs after the step and before
its checkpoint; a stage's best state is saved apart (workdir/stage_best) and restored when
the stage ends (also at the end of training), and the checkpoint of that step is saved then.
An evaluation that a preemption skipped runs when the run resumes, before the next step.
Held-out scores go to the metrics as heldout/*, stage changes as curriculum/* (the step of
the change, the new stage, the best step restored).

Preemption (rmt_jax.run_control): SIGTERM saves a checkpoint of the current step first
(synchronously, waiting for it), skips evaluation, and returns. A SIGTERM during an
evaluation interrupts it (on one process; with several, the evaluation's collectives make
every process finish it first).

Metrics (rmt_jax.metric_writer: TensorBoard through tensorboardX, workdir/metrics.jsonl,
and the absl log; process 0 only): train loss, answer-token accuracy, grad norm, exact
match and the official label-set accuracy of greedy answers on `train.answer_rows` rows of
the batch, steps/s, context tokens/s, curriculum stage and segments, learning rate; eval
metrics every `eval.every` steps (rmt_jax.evaluate_lib on BABILong, held-out batches on
synthetic data).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from babilong_tfds.babi_generator import check_recency
from rmt_jax import (
    checkpointing,
    early_stopping,
    files,
    input_pipeline,
    pretrained,
    scoring,
    sharding,
    warm_start,
)
from rmt_jax.curriculum import (
    AheadOfTime,
    Curriculum,
    CurriculumState,
    StageIterators,
    advance,
    heldout_due,
    record_heldout,
    stage_batch,
)
from rmt_jax.metric_writer import MetricWriter, Pace
from rmt_jax.run_control import Preempted, StopSignal, check_finite, periodic
from rmt_jax.scoring import MODEL_INPUTS, answer_metrics
from rmt_jax.synthetic_data import SyntheticData
from rmt_jax.train_state import (
    cooldown_steps,
    create_train_state,
    make_answer_fn,
    make_eval_step,
    make_optimizer,
    make_schedule,
    make_train_step,
    model_graphdef,
    schedule_count,
    stage_lr_scales,
)

# training steps the host may dispatch before the oldest of them has finished
MAX_STEPS_AHEAD = 2


def check_run_config(config: ml_collections.ConfigDict) -> None:
    """Raises a ValueError naming a run field that cannot work, before anything is written."""
    t = config.train
    for name, value, low in (("train.num_steps", t.num_steps, 1),
                             ("train.batch_size", t.batch_size, 1),
                             ("train.log_every", t.log_every, 1),
                             ("train.checkpoint_every", t.checkpoint_every, 1),
                             ("train.keep_checkpoints", t.keep_checkpoints, 1),
                             ("train.answer_rows", t.answer_rows, 0),
                             ("train.microbatches", t.get("microbatches", 1), 1),
                             ("eval.every", config.eval.every, 0)):
        if value < low:
            raise ValueError(f"{name}={value} must be >= {low}: set --config.{name}")
    if any(config.curriculum.get("story_questions", ())) and \
            config.data.babi_source != "generated":
        raise ValueError(f"curriculum.story_questions={tuple(config.curriculum.story_questions)}"
                         f" shortens simulated stories, but data.babi_source="
                         f"{config.data.babi_source!r} reads the bAbI files: set "
                         "--config.data.babi_source=generated or --config.curriculum."
                         "story_questions='()'")
    if config.curriculum.get("bare_share", 0.0) > 0 and config.data.synthetic:
        raise ValueError(f"curriculum.bare_share={config.curriculum.bare_share} mixes bare "
                         "BABILong stories into the stages, but data.synthetic=True has no "
                         "stories: set --config.curriculum.bare_share=0 or "
                         "--config.data.synthetic=False")
    stage_lr_scales(config)
    cooldown_steps(config)
    try:
        check_recency(config.data.get("question_recency"))
    except ValueError as error:
        raise ValueError(f"data.question_recency: {error}: set --config.data.question_recency"
                         ) from None


def _without_params(state: dict) -> dict:
    """The train state less its parameters: what checkpoints store beside them."""
    return {k: v for k, v in state.items() if k != "params"}


# -- the loop ---------------------------------------------------------------------------------
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                       allow_config_change: Sequence[str] = ()) -> dict:
    """Trains (resuming from workdir's newest checkpoint) and returns the last metrics.

    allow_config_change: config fields (or sections, 'optim') that may differ from the
    config the workdir was trained with (see checkpointing.check_config_change).
    """
    run = TrainingRun(config, workdir, allow_config_change)
    try:
        run.train()
    finally:
        run.close()
    run.write_results()
    return {"step": run.step, **run.scalars}


class TrainingRun:
    """One run of `train_and_evaluate`: set up on creation (checks, mesh, input, model and
    optimizer, the workdir's config files, the sharded state restored or made, the jitted
    programs), then `train()`, `close()` and `write_results()`.

    The loop's state: `state` (the train state pytree), `step`, `cstate` (the
    CurriculumState), `iterator` (the stage's data); `scalars` holds the newest metrics.
    """

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                 allow_config_change: Sequence[str]):
        self.config = config
        self._set_up(workdir, allow_config_change)
        self._restore()
        self._compile()

        # ---------------------------------------------------------------- metrics
        self.writer = MetricWriter(self.workdir)
        self.stop = StopSignal()
        self.pending: list[tuple[int, jax.Array]] = []  # (step, loss) not yet checked for NaN
        self.in_flight: list[jax.Array] = []  # losses of the steps dispatched, not yet waited for
        self.window: list[dict] = []  # device metrics since the last log
        self.scalars: dict[str, float] = {}
        self.tokens, self.window_start = 0, time.perf_counter()
        self.pace = Pace(config.train.num_steps)  # the ETA in the log line
        self.last_eval = None  # the newest full evaluation results (real data)
        self.prepared_for = None  # the stage whose successor is being compiled
        self.lr_scales = stage_lr_scales(config)  # () or a factor per stage
        self.lr_scale_arrays: dict[int, jax.Array] = {}  # on the devices, by stage
        self.last_lr_scale = 1.0  # the factor of the newest step (logged)

    def _set_up(self, workdir, allow_config_change: Sequence[str]) -> None:
        """Checks everything that can be checked, then writes the workdir's config files."""
        config = self.config
        check_run_config(config)
        self.curriculum = Curriculum.from_config(config)
        workdir = files.prepare_workdir(workdir, create=False)  # made once the config is checked

        # ---------------------------------------------------------------- mesh
        self.mesh = sharding.make_mesh(config)
        data_size = self.mesh.shape["data"]
        if config.train.batch_size % data_size:
            raise ValueError(f"train.batch_size={config.train.batch_size} is not divisible by "
                             f"the {data_size} devices of the data axis")
        micro = config.train.get("microbatches", 1)
        if config.train.batch_size % (micro * data_size):
            raise ValueError(
                f"train.batch_size={config.train.batch_size} does not split into "
                f"train.microbatches={micro} slices of whole rows on each of the {data_size} "
                f"devices of the data axis: set --config.train.microbatches to a divisor of "
                f"{config.train.batch_size // data_size}")
        self.batch_sharding = NamedSharding(self.mesh, P("data"))
        self.replicated = NamedSharding(self.mesh, P())
        logging.info("mesh %s on %d processes", dict(self.mesh.shape), jax.process_count())

        # ---------------------------------------------------------------- input
        process = {"process_index": jax.process_index(), "process_count": jax.process_count()}
        if config.data.synthetic:
            tokenizer = composer = None
            vocab_size = config.model.vocab_size
        else:
            tokenizer = input_pipeline.make_tokenizer(config)
            vocab_size = tokenizer.vocab_size

        # ---------------------------------------------------------------- model and optimizer
        model_config = input_pipeline.model_config(config, vocab_size)
        # A model to start from (one of ours, or GPT-2) is found and checked before anything
        # is compiled, read or written; its weights are loaded in `_restore`, on a fresh
        # start only.
        init_from = config.model.get("init_from")
        self.init_source = self.init_loader = None
        if init_from and warm_start.is_rmt_model(init_from):
            self.init_source = warm_start.open_checked(init_from, model_config, config)
            self.init_loader = warm_start.load_params
        elif init_from:
            self.init_source = pretrained.open_checked(init_from, model_config)
            self.init_loader = pretrained.load_params
        # Before anything is read into the run or written: a resume under another config stops.
        changes = checkpointing.check_config_change(workdir, config, model_config,
                                                    allow=allow_config_change)
        if changes:
            logging.warning("config changed since the last run in %s: %s", workdir,
                            ", ".join(f"{k} {old} -> {new}"
                                      for k, (old, new) in changes.items()))
        self.schedule = make_schedule(config)
        self.tx = make_optimizer(config, self.schedule)
        self.graphdef = model_graphdef(model_config)
        if config.data.synthetic:
            self.data = SyntheticData(config, **process)
        else:
            composer = input_pipeline.make_composer(config)
            self.data = input_pipeline.TrainData(config, composer, **process)
        self.heldout = None
        if self.curriculum.advance_on == "heldout":
            # A stage too short for any story stops the run here, before anything is written.
            self.heldout = early_stopping.Heldout(config, self.curriculum, composer=composer,
                                                  tokenizer=tokenizer)
            self.heldout.check()
        # Everything is validated: the workdir learns the config now.
        files.prepare_workdir(workdir)
        checkpointing.write_configs(workdir, config, model_config)
        self.workdir, self.model_config = workdir, model_config
        self.tokenizer, self.composer = tokenizer, composer

    def _restore(self) -> None:
        """The train state sharded over the mesh: the newest checkpoint's, or a fresh one
        (with config.model.init_from's weights: GPT-2's or one of our models'); the data
        iterators from its step."""
        config = self.config
        # ---------------------------------------------------------------- shard
        init = lambda: create_train_state(  # noqa: E731
            self.model_config, self.tx, config.train.seed)
        abstract_state = jax.eval_shape(init)
        self.state_sharding = sharding.state_shardings(abstract_state, self.mesh)
        self.abstract_state = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            abstract_state, self.state_sharding)

        # ---------------------------------------------------------------- checkpoint (resume)
        self.checkpointer = checkpointing.Checkpointer(
            self.workdir, keep=config.train.keep_checkpoints,
            async_save=config.train.async_checkpoint)
        restored = self.checkpointer.restore(self.abstract_state["params"],
                                             _without_params(self.abstract_state),
                                             set_aside=True)
        if restored is None:
            self.state = jax.jit(init, out_shardings=self.state_sharding)()
            if self.init_source is not None:
                self.state["params"] = self.init_loader(self.init_source, self.state["params"],
                                                        self.model_config)
                logging.info("parameters initialised from %s", self.init_source.source)
            self.step, self.cstate, data_state = 0, CurriculumState(), None
            logging.info("starting at step 0: %d parameters",
                         sum(x.size for x in jax.tree.leaves(self.state["params"])))
        else:
            self.state = {"params": restored.params, **restored.train}
            self.step = restored.step
            self.cstate = CurriculumState.from_json(restored.meta["curriculum"])
            data_state = restored.meta["data"]
            logging.info("resumed from step %d (curriculum stage %d)", self.step,
                         self.cstate.stage)
        self.last_saved = restored.step if restored else None
        self.stage_best = (early_stopping.StageBest(self.workdir,
                                                    async_save=config.train.async_checkpoint)
                           if self.heldout is not None else None)
        best = self.checkpointer.best_meta()
        self.best_score = None if best is None else best["score"]
        self.stages = StageIterators(self.data, self.cstate.stage, data_state)
        self.iterator = self.stages.current

    def _compile(self) -> None:
        # ---------------------------------------------------------------- update step
        # One executable per batch shape, so per curriculum stage; the next stage's are
        # compiled in the background while this one trains (AheadOfTime, prepare_next).
        state_sharding, batch_sharding = self.state_sharding, self.batch_sharding
        self.train_step = AheadOfTime(jax.jit(
            make_train_step(self.graphdef, self.tx, self.config.train.get("microbatches", 1)),
            in_shardings=(state_sharding, batch_sharding, self.replicated),
            out_shardings=(state_sharding, self.replicated), donate_argnums=0))
        self.answer_fn = AheadOfTime(jax.jit(
            make_answer_fn(self.graphdef, self.config.data.max_answer_len,
                           None if self.tokenizer is None else int(self.tokenizer.eos_id)),
            in_shardings=(state_sharding["params"], batch_sharding), out_shardings=batch_sharding))
        self.eval_step = jax.jit(make_eval_step(self.graphdef),
                                 in_shardings=(state_sharding["params"], batch_sharding),
                                 out_shardings=self.replicated)

    # -- the loop -----------------------------------------------------------------------------
    def train(self) -> None:
        """Steps until the end of training, the curriculum's end, or a preemption."""
        config = self.config
        # An evaluation that a preemption skipped runs now, as it would have then.
        stopped = False
        try:
            if self.heldout_step(last=self.step >= config.train.num_steps):
                self.save(wait=False)
        except Preempted:
            stopped = True  # the state is the checkpoint's: nothing to save
        while self.step < config.train.num_steps and not self.cstate.finished and not stopped:
            batch, metrics = self.one_step()
            self.advance_curriculum(metrics)
            changed = False
            if not self.stop.received:
                try:
                    changed = self.heldout_step(last=self.step == config.train.num_steps)
                except Preempted:
                    pass  # stop.received: saved below, evaluated again on resume
            preempted = self.stop.received or (
                jax.process_count() > 1 and self.checkpointer.latest.reached_preemption(self.step))
            last = self.step == config.train.num_steps or preempted or self.cstate.finished

            if periodic(self.step, config.train.log_every, last=last):
                self.log(batch, preempted)

            # Before evaluating: a preempted run (SIGTERM during the log too) saves first and
            # waits for it, then stops.
            preempted = preempted or self.stop.received
            if periodic(self.step, config.train.checkpoint_every,
                        last=last or preempted or changed):
                self.save(wait=preempted)
                self.window_start = time.perf_counter()

            if (config.eval.every and not preempted
                    and periodic(self.step, config.eval.every, last=last)):
                preempted = self.evaluate()
            if preempted:
                logging.warning("stopped at step %d after a preemption signal", self.step)
                break
        self.checkpointer.wait()

    def one_step(self) -> tuple[dict, dict]:
        """The next batch (numpy, this process's rows) and the step's device metrics."""
        batch = next(self.iterator)
        device_batch = sharding.global_batch({k: batch[k] for k in MODEL_INPUTS},
                                             self.batch_sharding)
        self.state, metrics = self.train_step(self.state, device_batch,
                                              self.lr_scale_array(self.cstate.stage))
        self.wait_for_device(metrics["loss"])
        if self.prepared_for != self.cstate.stage:
            self.prepare_next(self.cstate.stage, batch)
            self.prepared_for = self.cstate.stage
        self.step += 1
        self.tokens += int(batch["context_mask"].sum()) * jax.process_count()
        self.pending.append((self.step, metrics["loss"]))
        self.window.append(metrics)
        return batch, metrics

    def wait_for_device(self, loss: jax.Array) -> None:
        """Holds the host at most MAX_STEPS_AHEAD steps ahead of the device. Without a
        bound, steps whose metrics nothing reads (no accuracy-based stage end, between logs)
        queue up as fast as batches are made, and a SIGTERM waited for all of them before
        the checkpoint (27 queued 4k-token steps on the CPU: 4 minutes, past a preemption's
        usual grace). The step dispatched next still overlaps the one running."""
        self.in_flight.append(loss)
        if len(self.in_flight) > MAX_STEPS_AHEAD:
            self.in_flight.pop(0).block_until_ready()

    def lr_scale_array(self, stage: int) -> jax.Array:
        """The stage's factor on the learning rate (optim.stage_lr_scales), a replicated
        float32 scalar: the step takes it as an argument, so a new factor compiles nothing."""
        self.last_lr_scale = self.lr_scales[stage] if self.lr_scales else 1.0
        if stage not in self.lr_scale_arrays:
            value = np.float32(self.last_lr_scale)
            self.lr_scale_arrays[stage] = jax.make_array_from_callback(
                (), self.replicated, lambda _: value)
        return self.lr_scale_arrays[stage]

    def advance_curriculum(self, metrics: dict) -> None:
        """The step-based curriculum (rmt_jax.curriculum.advance): the next stage's data."""
        accuracy = (float(metrics["accuracy"]) if self.curriculum.needs_accuracy(self.cstate)
                    else None)
        new = advance(self.curriculum, self.cstate, step=self.step, accuracy=accuracy)
        if new.stage != self.cstate.stage:
            logging.info("step %d: curriculum stage %d -> %d (%g segments)", self.step,
                         self.cstate.stage, new.stage, self.curriculum.stage(new.stage).count)
            self.iterator = self.stages.advance(new.stage)
        self.cstate = new

    def heldout_step(self, last: bool) -> bool:
        """The held-out evaluation of the state after `step` steps, when due, and what it
        decides (rmt_jax.curriculum.record_heldout): saves a new best, restores the best
        state, begins the next stage. True when the state changed and must be saved.
        Raises Preempted on SIGTERM (the evaluation is due again on resume)."""
        step, cstate = self.step, self.cstate
        if self.heldout is None or not heldout_due(self.curriculum, cstate, step, last=last):
            return False
        check_finite(self.pending, self.last_saved)
        params = self.state["params"]
        if jax.process_count() > 1:  # every process scores on a full copy, as evaluate does
            params = jax.jit(lambda p: p, out_shardings=self.replicated)(params)
        with self.stop.interruptible():
            scores = self.heldout.score(nnx.merge(self.graphdef, params), cstate.stage)
        new, decision = record_heldout(self.curriculum, cstate, step=step,
                                       score=scores["exact_match"], last=last)
        self.writer.write(step, {**{f"heldout/{k}": v for k, v in scores.items()},
                                 "heldout/stage": cstate.stage,
                                 "heldout/best": decision.best_score,
                                 "heldout/best_step": decision.best_step,
                                 "heldout/stale": decision.stale})
        if decision.improved:
            self.stage_best.save(step, self.state["params"], _without_params(self.state),
                                 {"step": step, "stage": cstate.stage,
                                  "score": scores["exact_match"]})
        if decision.restore_step >= 0:
            params, train = self.stage_best.restore(decision.restore_step,
                                                    self.abstract_state["params"],
                                                    _without_params(self.abstract_state))
            # the step counter and dropout key run on; parameters and optimizer go back
            self.state = {**self.state, "params": params, "opt_state": train["opt_state"]}
            logging.info("step %d: restored the best state of curriculum stage %d (step %d)",
                         step, cstate.stage, decision.restore_step)
        if decision.stage_ended:
            # a training curve marks the stage changes at these steps (-1: the run is over)
            self.writer.write(step, {"curriculum/stage": -1 if new.finished else new.stage,
                                     "curriculum/best_step": decision.best_step})
            if new.finished:
                logging.info("step %d: the last curriculum stage has ended: training is over",
                             step)
            else:
                logging.info("step %d: curriculum stage %d -> %d (%g segments)", step,
                             cstate.stage, new.stage, self.curriculum.stage(new.stage).count)
                self.iterator = self.stages.advance(new.stage)
        self.cstate = new
        return decision.restore_step >= 0 or decision.stage_ended

    def log(self, batch: dict, preempted: bool) -> None:
        """The train metrics since the last log, and greedy answers to rows of `batch`."""
        config = self.config
        check_finite(self.pending, self.last_saved)
        elapsed = time.perf_counter() - self.window_start
        means = {k: float(np.mean(v))
                 for k, v in jax.device_get(jax.tree.map(lambda *x: x, *self.window)).items()}
        self.scalars = {f"train/{k}": v for k, v in means.items()}
        self.scalars.update({
            "train/learning_rate": float(self.schedule(schedule_count(self.state) - 1))
                                   * self.last_lr_scale,
            "train/stage": self.cstate.stage,
            "train/segments": self.curriculum.stage(self.cstate.stage).count,
            "train/steps_per_s": len(self.window) / elapsed,
            "train/tokens_per_s": self.tokens / elapsed,
        })
        rows = min(config.train.answer_rows, len(batch["answer"]))
        if rows and not preempted:
            predicted = multihost_utils.global_array_to_host_local_array(
                self.answer_fn(self.state["params"],
                               sharding.global_batch(batch, self.batch_sharding)),
                self.mesh, P("data"))
            scores = answer_metrics(np.asarray(predicted)[:rows], batch, self.tokenizer)
            self.scalars.update({f"train/{k}": v for k, v in scores.items()})
        self.writer.write(self.step, self.scalars, progress=self.pace.progress(
            self.step, len(self.window), self.window_start))
        self.window, self.tokens, self.window_start = [], 0, time.perf_counter()

    def evaluate(self) -> bool:
        """The periodic evaluation (rmt_jax.scoring.evaluate); a better score saves the best
        checkpoint. True when SIGTERM stopped it (the step's checkpoint is then on disk)."""
        check_finite(self.pending, self.last_saved)
        preempted = False
        try:
            with self.stop.interruptible():
                eval_scalars, score, self.last_eval = scoring.evaluate(
                    self.config, self.state["params"], self.graphdef, composer=self.composer,
                    tokenizer=self.tokenizer, batch_sharding=self.batch_sharding,
                    eval_step=self.eval_step, answer_fn=self.answer_fn)
        except Preempted:
            preempted = True
            if self.last_saved != self.step:
                self.save(wait=True)
            else:
                self.checkpointer.wait()
        else:
            self.writer.write(self.step, eval_scalars)
            self.scalars.update(eval_scalars)
            if self.best_score is None or score > self.best_score:
                self.best_score = score
                self.checkpointer.save_best(self.step, self.state["params"],
                                            {**self.meta(), "score": score})
        self.window_start = time.perf_counter()
        return preempted

    # -- helpers of the loop ------------------------------------------------------------------
    def meta(self) -> dict:
        return {"step": self.step, "data": self.iterator.get_state(),
                "curriculum": self.cstate.to_json()}

    def save(self, wait: bool) -> None:
        check_finite(self.pending, self.last_saved)
        if self.step in self.checkpointer.latest.all_steps():  # saved before a held-out restore
            self.checkpointer.latest.delete(self.step)
        if self.stage_best is not None:
            # The checkpoint's curriculum state names the stage's best step: that state goes to
            # disk first, or a kill between the two saves resumes without it.
            self.stage_best.wait()
        self.checkpointer.save(self.step, self.state["params"], _without_params(self.state),
                               self.meta())
        self.last_saved = self.step
        if wait:  # preempted: the checkpoint must be on disk before the process ends
            self.checkpointer.wait()

    def prepare_next(self, stage: int, batch: dict) -> None:
        """Compiles the next stage's programs now, from this stage's (numpy) batch."""
        if stage + 1 >= self.curriculum.num_stages:
            return
        shape = self.curriculum.stage(stage + 1)
        # with same_length_batches, every width of the stage, the longest first
        sizes = sorted({shape.padded_len(size) for size in shape.context_sizes}, reverse=True)
        structs = [stage_batch(batch, size, self.batch_sharding) for size in sizes]
        self.train_step.prepare(self.abstract_state,
                                *({k: s[k] for k in MODEL_INPUTS} for s in structs),
                                rest=(jax.ShapeDtypeStruct((), np.float32,
                                                           sharding=self.replicated),))
        if self.config.train.answer_rows:
            self.answer_fn.prepare(self.abstract_state["params"], structs[0])

    def close(self) -> None:
        """Restores the SIGTERM handler, waits for background work, closes files."""
        self.stop.restore()
        self.train_step.wait()
        self.answer_fn.wait()
        self.stages.close()
        self.writer.close()
        self.checkpointer.close()
        if self.stage_best is not None:
            self.stage_best.close()

    def write_results(self) -> None:
        """The newest full evaluation's tables (real data, process 0): workdir/eval."""
        if self.last_eval is not None and jax.process_index() == 0:
            from rmt_jax import evaluate_lib

            evaluate_lib.write_results(self.last_eval, self.workdir / "eval",
                                       title=f"RMT step {self.step}: accuracy (%) on BABILong")
            print(f"step {self.step}: " + evaluate_lib.format_table(self.last_eval), flush=True)
