"""Training RMT / RMT-R on BABILong: `train_and_evaluate(config, workdir)`, one loop.

The loop, phase by phase (banners below): a device mesh ('data' x 'model'); the input
(`input_pipeline.TrainData`, or `synthetic_data.SyntheticData` with config.data.synthetic)
per curriculum stage; the model and AdamW; parameters and optimizer state sharded over the
mesh; a jitted, donated update step; checkpoints (rmt_jax.checkpointing) and metrics.

The train state is a plain pytree, updated by a pure jitted function:

  {'params': nnx.State, 'opt_state': optax state, 'step': int32 [], 'rng': uint32 key data}

Sharding (rmt_jax.sharding): the batch is split over 'data'; on 'model' the attention
heads, the MLP's 4d hidden dim and the vocabulary of the tied embedding are split where
divisible (Megatron style); everything else is replicated. Optimizer moments take the
sharding of their parameter.

Weight decay (0.01 in the papers) applies to the weight matrices only: not to biases,
LayerNorm scales and offsets, nor the learned initial memory.

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

Preemption: SIGTERM saves a checkpoint of the current step first (synchronously, waiting for
it), skips evaluation, and returns. A SIGTERM during an evaluation interrupts it (on one
process; with several, the evaluation's collectives make every process finish it first).

Metrics (TensorBoard through tensorboardX, workdir/metrics.jsonl, and the absl log;
process 0 only): train loss, answer-token accuracy, grad norm, exact match and the
official label-set accuracy of greedy answers on `train.answer_rows` rows of the batch,
steps/s, context tokens/s, curriculum stage and segments, learning rate; eval metrics every
`eval.every` steps (rmt_jax.evaluate_lib on BABILong, held-out batches on synthetic data).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from babilong_tfds import metric
from babilong_tfds.tasks import TASKS
from rmt_jax import checkpointing, early_stopping, files, input_pipeline, pretrained, sharding
from rmt_jax.core.answer import greedy_answer, loss_fn
from rmt_jax.core.config import ModelConfig
from rmt_jax.core.model import RMT
from rmt_jax.curriculum import (
    Curriculum,
    CurriculumState,
    StageIterators,
    advance,
    heldout_due,
    record_heldout,
)
from rmt_jax.synthetic_data import SyntheticData

METRICS_FILE = "metrics.jsonl"
# The step's model inputs; the other batch fields are for scoring answers.
MODEL_INPUTS = ("context", "context_mask", "query", "loss_mask", "answer", "question",
                "question_length")  # loss_fn reads these
# -- model and optimizer --------------------------------------------------------------------
def make_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    o, steps = config.optim, config.train.num_steps
    peak, warmup = o.learning_rate, min(o.warmup_steps, steps)
    end = peak * o.end_lr_fraction
    if o.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(steps, warmup + 1), end)
    if o.schedule == "linear":
        decay = optax.linear_schedule(peak, end, max(steps - warmup, 1))
    elif o.schedule == "constant":
        decay = optax.constant_schedule(peak)
    else:
        raise ValueError(f"unknown optim.schedule {o.schedule!r}: expected cosine, linear or "
                         "constant")
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params):
    """True on the weight matrices that AdamW decays (not biases, LayerNorms, memory)."""
    def decays(path, x):
        name = sharding.path_names(path)[-1]
        return x.ndim >= 2 and name != "memory" and not name.endswith("bias")

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: ml_collections.ConfigDict,
                   schedule: optax.Schedule) -> optax.GradientTransformation:
    o = config.optim
    return optax.chain(
        optax.clip_by_global_norm(o.grad_clip),
        optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=decay_mask))


def create_train_state(model_config: ModelConfig, tx: optax.GradientTransformation,
                       seed: int) -> dict:
    params = nnx.state(RMT(model_config, rngs=nnx.Rngs(seed)), nnx.Param)
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(jax.random.key(seed + 1))}


def model_graphdef(model_config: ModelConfig) -> nnx.GraphDef:
    return nnx.split(nnx.eval_shape(lambda: RMT(model_config, rngs=nnx.Rngs(0))))[0]


# -- steps ------------------------------------------------------------------------------------
def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation) -> Callable:
    """(state, batch) -> (state, metrics): one AdamW step on the answer-token loss."""

    def train_step(state: dict, batch: dict):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])

        def loss_of(params):
            return loss_fn(nnx.merge(graphdef, params), batch, key)

        (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {"loss": loss, "accuracy": aux["accuracy"],
                   "grad_norm": optax.tree.norm(grads)}
        return ({"params": params, "opt_state": opt_state, "step": state["step"] + 1,
                 "rng": state["rng"]}, metrics)

    return train_step


def make_answer_fn(graphdef: nnx.GraphDef, max_new_tokens: int) -> Callable:
    """(params, batch) -> greedy answer tokens [B, max_new_tokens] after the context."""

    def answer(params, batch):
        return greedy_answer(nnx.merge(graphdef, params), batch["context"],
                             batch["context_mask"], batch["question"], batch["question_length"],
                             max_new_tokens=max_new_tokens)

    return answer


def make_eval_step(graphdef: nnx.GraphDef) -> Callable:
    """(params, batch) -> {'loss', 'accuracy'} without dropout."""

    def eval_step(params, batch):
        loss, aux = loss_fn(nnx.merge(graphdef, params), batch)
        return {"loss": loss, "accuracy": aux["accuracy"]}

    return eval_step


class AheadOfTime:
    """A jitted `fn(first, batch)` compiled once per batch shape, ahead of time on request.

    A curriculum stage change brings new batch shapes, which `jax.jit` would compile at the
    first call while the accelerator waits. `prepare(first, batch_structs)` compiles the
    next stage's shapes in a background thread while the current stage trains; a call finds
    the executable ready (or waits for it, or compiles then, as jit would). The programs are
    the ones jit would build: same lowering, same in/out shardings and donation.
    """

    def __init__(self, jitted):
        self.jitted = jitted
        self.ready: dict[tuple, jax.stages.Compiled] = {}
        self.pending: dict[tuple, threading.Thread] = {}

    @staticmethod
    def key(batch: dict) -> tuple:
        return tuple((k, tuple(v.shape), str(v.dtype)) for k, v in sorted(batch.items()))

    def prepare(self, first, batch: dict) -> None:
        key = self.key(batch)
        if key not in self.ready and key not in self.pending:
            thread = threading.Thread(target=self._compile, args=(key, first, batch),
                                      daemon=True)
            self.pending[key] = thread
            thread.start()

    def _compile(self, key, first, batch) -> None:
        try:
            self.ready[key] = self.jitted.lower(first, batch).compile()
        except Exception as error:  # noqa: BLE001 - the call compiles again and raises
            logging.warning("compiling ahead of time failed (%s); compiling at first use",
                            error)

    def wait(self) -> None:
        """Waits for the background compiles (a thread inside XLA must not outlive Python)."""
        for thread in list(self.pending.values()):
            thread.join()

    def __call__(self, first, batch: dict):
        key = self.key(batch)
        program = self.ready.get(key)
        if program is None or key in self.pending:
            thread = self.pending.pop(key, None)
            if thread is not None:
                thread.join()  # returns at once if the compile has finished
            program = self.ready.get(key)
            if program is None:
                program = self.ready[key] = self.jitted.lower(first, batch).compile()
        return program(first, batch)


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


# -- scoring answers --------------------------------------------------------------------------
def exact_match_tokens(predicted: np.ndarray, answer: np.ndarray) -> np.ndarray:
    """[B] bool: the prediction repeats the target's tokens up to and with its end token."""
    lengths = (answer != 0).sum(-1)
    positions = np.arange(answer.shape[1])[None, :]
    return np.all((predicted == answer) | (positions >= lengths[:, None]), axis=-1)


def answer_metrics(predicted: np.ndarray, batch: dict, tokenizer=None) -> dict[str, float]:
    """Exact match of greedy answers, and the official label-set accuracy given a tokenizer."""
    rows = len(predicted)
    out = {"exact_match": float(exact_match_tokens(predicted, batch["answer"][:rows]).mean())}
    if tokenizer is not None:
        correct = []
        for i in range(rows):
            question = tokenizer.decode(batch["question"][i, : batch["question_length"][i]])
            target = input_pipeline.decode_answer(batch["answer"][i], tokenizer)
            output = input_pipeline.decode_answer(predicted[i], tokenizer)
            correct.append(metric.label_score(target, output, question,
                                              TASKS[int(batch["task_id"][i])]))
        out["label_accuracy"] = float(np.mean(correct))
    return out


# -- metrics ----------------------------------------------------------------------------------
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


def periodic(step: int, every: int, *, last: bool = False) -> bool:
    """Whether a periodic action runs at `step`: every `every` steps (never for every <= 0)
    and at the last step."""
    return last or (every > 0 and step % every == 0)


def format_duration(seconds: float) -> str:
    """'45s', '12m05s', '3h20m'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def check_run_config(config: ml_collections.ConfigDict) -> None:
    """Raises a ValueError naming a run field that cannot work, before anything is written."""
    t = config.train
    for name, value, low in (("train.num_steps", t.num_steps, 1),
                             ("train.batch_size", t.batch_size, 1),
                             ("train.log_every", t.log_every, 1),
                             ("train.checkpoint_every", t.checkpoint_every, 1),
                             ("train.keep_checkpoints", t.keep_checkpoints, 1),
                             ("train.answer_rows", t.answer_rows, 0),
                             ("eval.every", config.eval.every, 0)):
        if value < low:
            raise ValueError(f"{name}={value} must be >= {low}: set --config.{name}")


def schedule_count(state: dict) -> int:
    """The optimizer's update count, which the learning-rate schedule reads: the step, less
    the steps undone by restoring a curriculum stage's best state."""
    counts = [s.count for s in jax.tree.leaves(
        state["opt_state"], is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
        if isinstance(s, optax.ScaleByScheduleState)]
    return int(jax.device_get(counts[0]))


def _check_finite(pending: list[tuple[int, jax.Array]], last_saved: int | None) -> None:
    """Raises on the first non-finite loss among steps not yet checked; clears the list."""
    losses = jax.device_get([loss for _, loss in pending])
    for (step, _), loss in zip(pending, losses, strict=True):
        if not np.isfinite(loss):
            good = ("no checkpoint was saved yet" if last_saved is None
                    else f"the last good checkpoint is step {last_saved}")
            raise FloatingPointError(
                f"non-finite loss ({loss}) at step {step}: stopping without saving; {good}. "
                "Lower optim.learning_rate or check the data, then resume")
    pending.clear()


# -- evaluation -------------------------------------------------------------------------------
def evaluate(config, params, graphdef, *, composer, tokenizer, batch_sharding,
             eval_step, answer_fn) -> tuple[dict[str, float], float, dict | None]:
    """Eval metrics, the score that picks the best checkpoint (higher is better), and the
    full results of `evaluate_lib.evaluate_model` on real data (None on synthetic data)."""
    if not config.data.synthetic:
        from rmt_jax import evaluate_lib

        if jax.process_count() > 1:
            # Every process evaluates on a full local copy (evaluate_model runs its own jit
            # over host arrays); only process 0 writes the results.
            replicated = NamedSharding(batch_sharding.mesh, P())
            params = jax.jit(lambda p: p, out_shardings=replicated)(params)
        out = evaluate_lib.evaluate_model(
            nnx.merge(graphdef, params), config, composer, tokenizer, tasks=config.data.tasks,
            lengths=config.eval.lengths, num_samples=config.eval.num_samples,
            source=config.eval.source, batch_size=config.eval.batch_size)
        scalars = {f"eval/{task}/{length}/{name}": cell[name]
                   for task, by_length in out["results"].items()
                   for length, cell in by_length.items() for name in ("accuracy", "exact_match")}
        accuracy = float(np.mean([cell["accuracy"] for by_length in out["results"].values()
                                  for cell in by_length.values()]))
        scalars["eval/accuracy"] = accuracy
        return scalars, accuracy, out
    # Synthetic: held-out batches (another data seed) of the longest stage.
    held_out = config.copy_and_resolve_references()
    held_out.data.seed = config.data.seed + 7919
    data = SyntheticData(held_out, process_index=jax.process_index(),
                         process_count=jax.process_count())
    iterator = data.iterator(data.curriculum.num_stages - 1)
    batches = max(1, config.eval.num_samples // config.train.batch_size)
    sums: dict[str, float] = {}
    for _ in range(batches):
        batch = next(iterator)
        device_batch = sharding.global_batch(batch, batch_sharding)
        scores = jax.device_get(eval_step(params, {k: device_batch[k] for k in MODEL_INPUTS}))
        predicted = multihost_utils.global_array_to_host_local_array(
            answer_fn(params, device_batch), batch_sharding.mesh, P("data"))
        scores.update(answer_metrics(np.asarray(predicted), batch))
        for k, v in scores.items():
            sums[k] = sums.get(k, 0.0) + float(v) / batches
    return {f"eval/{k}": v for k, v in sums.items()}, sums["exact_match"], None


# -- the loop ---------------------------------------------------------------------------------
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                       allow_config_change: Sequence[str] = ()) -> dict:
    """Trains (resuming from workdir's newest checkpoint) and returns the last metrics.

    allow_config_change: config fields (or sections, 'optim') that may differ from the
    config the workdir was trained with (see checkpointing.check_config_change).
    """
    check_run_config(config)
    curriculum = Curriculum.from_config(config)
    workdir = files.prepare_workdir(workdir, create=False)  # made once the config is checked

    # ---------------------------------------------------------------- mesh
    mesh = sharding.make_mesh(config)
    data_size = mesh.shape["data"]
    if config.train.batch_size % data_size:
        raise ValueError(f"train.batch_size={config.train.batch_size} is not divisible by the "
                         f"{data_size} devices of the data axis")
    batch_sharding = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())
    logging.info("mesh %s on %d processes", dict(mesh.shape), jax.process_count())

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
    # A GPT-2 checkpoint to start from is found and checked before anything is compiled,
    # read or written; its weights are loaded below, on a fresh start only.
    gpt2 = (pretrained.open_checked(config.model.init_from, model_config)
            if config.model.get("init_from") else None)
    # Before anything is read into the run or written: a resume under another config stops.
    changes = checkpointing.check_config_change(workdir, config, model_config,
                                                allow=allow_config_change)
    if changes:
        logging.warning("config changed since the last run in %s: %s", workdir,
                        ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changes.items()))
    schedule = make_schedule(config)
    tx = make_optimizer(config, schedule)
    graphdef = model_graphdef(model_config)
    if config.data.synthetic:
        data = SyntheticData(config, **process)
    else:
        composer = input_pipeline.make_composer(config)
        data = input_pipeline.TrainData(config, composer, **process)
    heldout = None
    if curriculum.advance_on == "heldout":
        # A stage too short for any story stops the run here, before anything is written.
        heldout = early_stopping.Heldout(config, curriculum, composer=composer,
                                         tokenizer=tokenizer)
        heldout.check()
    # Everything is validated: the workdir learns the config now.
    files.prepare_workdir(workdir)
    checkpointing.write_configs(workdir, config, model_config)

    # ---------------------------------------------------------------- shard
    init = lambda: create_train_state(model_config, tx, config.train.seed)  # noqa: E731
    abstract_state = jax.eval_shape(init)
    state_sharding = sharding.state_shardings(abstract_state, mesh)
    abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                                    sharding=s),
                                  abstract_state, state_sharding)

    # ---------------------------------------------------------------- checkpoint (resume)
    checkpointer = checkpointing.Checkpointer(workdir, keep=config.train.keep_checkpoints,
                                              async_save=config.train.async_checkpoint)
    restored = checkpointer.restore(
        abstract_state["params"],
        {k: v for k, v in abstract_state.items() if k != "params"}, set_aside=True)
    if restored is None:
        state = jax.jit(init, out_shardings=state_sharding)()
        if gpt2 is not None:
            state["params"] = pretrained.load_params(gpt2, state["params"], model_config)
            logging.info("backbone initialised from GPT-2 weights in %s", gpt2.weights)
        step, cstate, data_state = 0, CurriculumState(), None
        logging.info("starting from scratch: %d parameters",
                     sum(x.size for x in jax.tree.leaves(state["params"])))
    else:
        state = {"params": restored.params, **restored.train}
        step = restored.step
        cstate = CurriculumState.from_json(restored.meta["curriculum"])
        data_state = restored.meta["data"]
        logging.info("resumed from step %d (curriculum stage %d)", step, cstate.stage)
    stage_best = (early_stopping.StageBest(workdir, async_save=config.train.async_checkpoint)
                  if heldout is not None else None)
    best = checkpointer.best_meta()
    best_score = None if best is None else best["score"]
    stages = StageIterators(data, cstate.stage, data_state)
    iterator = stages.current

    # ---------------------------------------------------------------- update step
    # One executable per batch shape, so per curriculum stage; the next stage's are
    # compiled in the background while this one trains (AheadOfTime, prepare_next below).
    train_step = AheadOfTime(jax.jit(make_train_step(graphdef, tx),
                                     in_shardings=(state_sharding, batch_sharding),
                                     out_shardings=(state_sharding, replicated),
                                     donate_argnums=0))
    answer_fn = AheadOfTime(jax.jit(make_answer_fn(graphdef, config.data.max_answer_len),
                                    in_shardings=(state_sharding["params"], batch_sharding),
                                    out_shardings=batch_sharding))
    eval_step = jax.jit(make_eval_step(graphdef),
                        in_shardings=(state_sharding["params"], batch_sharding),
                        out_shardings=replicated)

    # ---------------------------------------------------------------- metrics
    writer = MetricWriter(workdir)
    stop = StopSignal()
    pending: list[tuple[int, jax.Array]] = []  # (step, loss) not yet checked for NaN
    window: list[dict] = []  # device metrics since the last log
    last_saved = restored.step if restored else None
    scalars: dict[str, float] = {}
    tokens, window_start = 0, time.perf_counter()
    pace_start = None  # (step, time) of the first log: the ETA's rate counts from there
    last_eval = None  # the newest full evaluation results (real data)

    def meta() -> dict:
        return {"step": step, "data": iterator.get_state(), "curriculum": cstate.to_json()}

    def save(wait: bool) -> None:
        nonlocal last_saved
        _check_finite(pending, last_saved)
        if step in checkpointer.latest.all_steps():  # saved before a held-out restore
            checkpointer.latest.delete(step)
        checkpointer.save(step, state["params"],
                          {k: v for k, v in state.items() if k != "params"}, meta())
        last_saved = step
        if wait:  # preempted: the checkpoint must be on disk before the process ends
            checkpointer.wait()

    def progress() -> str:
        """'12/100, ETA 3m05s' at the pace since the first log (evaluations included)."""
        nonlocal pace_start
        now = time.perf_counter()
        if pace_start is None or step <= pace_start[0]:
            pace_start = (step, now)
            rate = len(window) / max(now - window_start, 1e-9)
        else:
            rate = (step - pace_start[0]) / max(now - pace_start[1], 1e-9)
        eta = format_duration((config.train.num_steps - step) / rate)
        return f"{step}/{config.train.num_steps}, ETA {eta}"

    def prepare_next(stage: int, batch: dict) -> None:
        """Compiles the next stage's programs now, from this stage's (numpy) batch."""
        if stage + 1 >= curriculum.num_stages:
            return
        pad = curriculum.stage(stage + 1).segments
        structs = stage_batch(batch, pad * config.model.segment_len, batch_sharding)
        train_step.prepare(abstract_state, {k: structs[k] for k in MODEL_INPUTS})
        if config.train.answer_rows:
            answer_fn.prepare(abstract_state["params"], structs)

    def heldout_step(last: bool) -> bool:
        """The held-out evaluation of the state after `step` steps, when due, and what it
        decides (rmt_jax.curriculum.record_heldout): saves a new best, restores the best
        state, begins the next stage. True when the state changed and must be saved.
        Raises Preempted on SIGTERM (the evaluation is due again on resume)."""
        nonlocal state, cstate, iterator
        if heldout is None or not heldout_due(curriculum, cstate, step, last=last):
            return False
        _check_finite(pending, last_saved)
        params = state["params"]
        if jax.process_count() > 1:  # every process scores on a full copy, as evaluate does
            params = jax.jit(lambda p: p, out_shardings=replicated)(params)
        with stop.interruptible():
            scores = heldout.score(nnx.merge(graphdef, params), cstate.stage)
        new, decision = record_heldout(curriculum, cstate, step=step,
                                       score=scores["exact_match"], last=last)
        writer.write(step, {**{f"heldout/{k}": v for k, v in scores.items()},
                            "heldout/stage": cstate.stage, "heldout/best": decision.best_score,
                            "heldout/best_step": decision.best_step,
                            "heldout/stale": decision.stale})
        if decision.improved:
            stage_best.save(step, state["params"],
                            {k: v for k, v in state.items() if k != "params"},
                            {"step": step, "stage": cstate.stage, "score": scores["exact_match"]})
        if decision.restore_step >= 0:
            params, train = stage_best.restore(
                decision.restore_step, abstract_state["params"],
                {k: v for k, v in abstract_state.items() if k != "params"})
            # the step counter and dropout key run on; parameters and optimizer go back
            state = {**state, "params": params, "opt_state": train["opt_state"]}
            logging.info("step %d: restored the best state of curriculum stage %d (step %d)",
                         step, cstate.stage, decision.restore_step)
        if decision.stage_ended:
            # a training curve marks the stage changes at these steps (-1: the run is over)
            writer.write(step, {"curriculum/stage": -1 if new.finished else new.stage,
                                "curriculum/best_step": decision.best_step})
            if new.finished:
                logging.info("step %d: the last curriculum stage has ended: training is over",
                             step)
            else:
                logging.info("step %d: curriculum stage %d -> %d (%g segments)", step,
                             cstate.stage, new.stage, curriculum.stage(new.stage).count)
                iterator = stages.advance(new.stage)
        cstate = new
        return decision.restore_step >= 0 or decision.stage_ended

    prepared_for = None  # the stage whose successor is being compiled

    try:
        # An evaluation that a preemption skipped runs now, as it would have then.
        stopped = False
        try:
            if heldout_step(last=step >= config.train.num_steps):
                save(wait=False)
        except Preempted:
            stopped = True  # the state is the checkpoint's: nothing to save
        while step < config.train.num_steps and not cstate.finished and not stopped:
            # ---------------------------------------------------------- one step
            batch = next(iterator)
            device_batch = sharding.global_batch({k: batch[k] for k in MODEL_INPUTS},
                                                 batch_sharding)
            state, metrics = train_step(state, device_batch)
            if prepared_for != cstate.stage:
                prepare_next(cstate.stage, batch)
                prepared_for = cstate.stage
            step += 1
            tokens += int(batch["context_mask"].sum()) * jax.process_count()
            pending.append((step, metrics["loss"]))
            window.append(metrics)

            # ---------------------------------------------------------- curriculum
            accuracy = (float(metrics["accuracy"]) if curriculum.needs_accuracy(cstate)
                        else None)
            new_cstate = advance(curriculum, cstate, step=step, accuracy=accuracy)
            if new_cstate.stage != cstate.stage:
                logging.info("step %d: curriculum stage %d -> %d (%g segments)", step,
                             cstate.stage, new_cstate.stage,
                             curriculum.stage(new_cstate.stage).count)
                iterator = stages.advance(new_cstate.stage)
            cstate = new_cstate
            changed = False
            if not stop.received:
                try:
                    changed = heldout_step(last=step == config.train.num_steps)
                except Preempted:
                    pass  # stop.received: saved below, evaluated again on resume
            preempted = stop.received or (jax.process_count() > 1
                                          and checkpointer.latest.reached_preemption(step))
            last = step == config.train.num_steps or preempted or cstate.finished

            # ---------------------------------------------------------- log
            if periodic(step, config.train.log_every, last=last):
                _check_finite(pending, last_saved)
                elapsed = time.perf_counter() - window_start
                means = {k: float(np.mean(v))
                         for k, v in jax.device_get(jax.tree.map(lambda *x: x, *window)).items()}
                scalars = {f"train/{k}": v for k, v in means.items()}
                scalars.update({
                    "train/learning_rate": float(schedule(schedule_count(state) - 1)),
                    "train/stage": cstate.stage,
                    "train/segments": curriculum.stage(cstate.stage).count,
                    "train/steps_per_s": len(window) / elapsed,
                    "train/tokens_per_s": tokens / elapsed,
                })
                rows = min(config.train.answer_rows, len(batch["answer"]))
                if rows and not preempted:
                    predicted = multihost_utils.global_array_to_host_local_array(
                        answer_fn(state["params"], sharding.global_batch(batch, batch_sharding)),
                        mesh, P("data"))
                    scores = answer_metrics(np.asarray(predicted)[:rows], batch, tokenizer)
                    scalars.update({f"train/{k}": v for k, v in scores.items()})
                writer.write(step, scalars, progress=progress())
                window, tokens, window_start = [], 0, time.perf_counter()

            # ---------------------------------------------------------- checkpoint
            # Before evaluating: a preempted run (SIGTERM during the log too) saves first and
            # waits for it, then stops.
            preempted = preempted or stop.received
            if periodic(step, config.train.checkpoint_every, last=last or preempted or changed):
                save(wait=preempted)
                window_start = time.perf_counter()

            # ---------------------------------------------------------- evaluate
            if (config.eval.every and not preempted
                    and periodic(step, config.eval.every, last=last)):
                _check_finite(pending, last_saved)
                try:
                    with stop.interruptible():
                        eval_scalars, score, last_eval = evaluate(
                            config, state["params"], graphdef, composer=composer,
                            tokenizer=tokenizer, batch_sharding=batch_sharding,
                            eval_step=eval_step, answer_fn=answer_fn)
                except Preempted:
                    preempted = True
                    if last_saved != step:
                        save(wait=True)
                    else:
                        checkpointer.wait()
                else:
                    writer.write(step, eval_scalars)
                    scalars.update(eval_scalars)
                    if best_score is None or score > best_score:
                        best_score = score
                        checkpointer.save_best(step, state["params"],
                                               {**meta(), "score": score})
                window_start = time.perf_counter()
            if preempted:
                logging.warning("stopped at step %d after a preemption signal", step)
                break
        checkpointer.wait()
    finally:
        stop.restore()
        train_step.wait()
        answer_fn.wait()
        stages.close()
        writer.close()
        checkpointer.close()
        if stage_best is not None:
            stage_best.close()
    if last_eval is not None and jax.process_index() == 0:
        from rmt_jax import evaluate_lib

        evaluate_lib.write_results(last_eval, workdir / "eval",
                                   title=f"RMT step {step}: accuracy (%) on BABILong")
        print(f"step {step}: " + evaluate_lib.format_table(last_eval), flush=True)
    return {"step": step, **scalars}
