"""The train state and the pure functions that the training loop jits.

The train state is a plain pytree, updated by a pure jitted function (`make_train_step`):

  {'params': nnx.State, 'opt_state': optax state, 'step': int32 [], 'rng': uint32 key data}

The optimizer is AdamW after global-norm clipping (`make_optimizer`), its learning rate a
warm-up then cosine, linear or constant decay (`make_schedule`), optionally a linear
cool-down to 0 over the last `optim.cooldown_steps` updates, times a factor per
curriculum stage (`stage_lr_scales`, given to the step). Weight decay (0.01 in the
papers) applies to the weight matrices only: not to biases, LayerNorm scales and offsets,
nor the learned initial memory (`decay_mask`). Dropout keys are fold_in(rng, step).
`make_answer_fn` (greedy answers) and `make_eval_step` (loss without dropout) score a batch.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from rmt_jax import sharding
from rmt_jax.core.answer import greedy_answer, loss_fn
from rmt_jax.core.config import ModelConfig
from rmt_jax.core.model import RMT


# -- model and optimizer --------------------------------------------------------------------
def make_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    o, steps = config.optim, config.train.num_steps
    peak, warmup = o.learning_rate, min(o.warmup_steps, steps)
    end = peak * o.end_lr_fraction
    if o.schedule == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(steps, warmup + 1),
                                                      end)
    elif o.schedule in ("linear", "constant"):
        decay = optax.linear_schedule(peak, end, max(steps - warmup, 1)) \
            if o.schedule == "linear" else optax.constant_schedule(peak)
        schedule = optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay],
                                        [warmup])
    else:
        raise ValueError(f"unknown optim.schedule {o.schedule!r}: expected cosine, linear or "
                         "constant")
    cooldown = cooldown_steps(config)
    if not cooldown:
        return schedule
    start = steps - cooldown
    # the warm-stable-decay shape: the schedule's rate times 1 until `start`, then falling
    # linearly to 0 at train.num_steps (a constant schedule resumed with a cool-down)
    ramp = optax.join_schedules([optax.constant_schedule(1.0),
                                 optax.linear_schedule(1.0, 0.0, cooldown)], [start])
    return lambda count: schedule(count) * ramp(count)


def cooldown_steps(config: ml_collections.ConfigDict) -> int:
    """`optim.cooldown_steps`, checked: the last updates before train.num_steps over which the
    learning rate falls linearly to 0 (0: none). Raises a ValueError naming the fix."""
    value, steps = config.optim.get("cooldown_steps", 0) or 0, config.train.num_steps
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= steps:
        raise ValueError(f"optim.cooldown_steps={value!r} must be a whole number of updates "
                         f"from 0 to train.num_steps={steps}: set --config.optim.cooldown_steps")
    return value


def stage_lr_scales(config: ml_collections.ConfigDict) -> tuple[float, ...]:
    """`optim.stage_lr_scales`, checked: one factor > 0 on the learning rate per curriculum
    stage (`curriculum.segments`), or () for 1 in every stage. Raises a ValueError naming
    the fix."""
    scales = tuple(config.optim.get("stage_lr_scales", ()) or ())
    stages = len(config.curriculum.segments)
    if not scales:
        return ()
    try:
        values = tuple(float(x) for x in scales)
    except (TypeError, ValueError):
        values = ()
    if len(values) != stages or not all(0 < x < float("inf") for x in values):
        raise ValueError(
            f"optim.stage_lr_scales={scales} must hold one factor > 0 for each of the "
            f"{stages} curriculum stages (curriculum.segments="
            f"{tuple(config.curriculum.segments)}): set --config.optim.stage_lr_scales="
            f"'({','.join(['1'] * stages)})' with your factors, or '()' for none")
    return values


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
def split_microbatches(batch: dict, microbatches: int) -> dict:
    """Every [B, ...] leaf as [microbatches, B / microbatches, ...], microbatch j holding rows
    j, j + microbatches, ...: each device's rows (the batch is split over the data axis in
    contiguous blocks) go to every microbatch alike."""
    def split(x):
        x = jnp.asarray(x)
        rows = x.shape[0] // microbatches
        return jnp.swapaxes(x.reshape(rows, microbatches, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    microbatches: int = 1) -> Callable:
    """(state, batch[, lr_scale]) -> (state, metrics): one AdamW step on the answer-token
    loss, at `lr_scale` (a scalar, traced: no recompile when it changes) times the schedule's
    learning rate (`optim.stage_lr_scales`: a factor per curriculum stage).

    microbatches > 1: the batch's gradient is accumulated over that many slices of it in a
    `lax.scan` (activation memory of one slice), each slice weighted by its answer tokens, so
    the loss, accuracy and gradient are the whole batch's (up to float rounding); only the
    dropout masks differ (slice j's key is fold_in(step key, j)).
    """

    def grad_of(params, batch, key):
        def loss_of(params):
            return loss_fn(nnx.merge(graphdef, params), batch, key)

        return jax.value_and_grad(loss_of, has_aux=True)(params)

    def accumulated(params, batch, key):
        def one(carry, xs):
            j, micro = xs
            (loss, aux), grads = grad_of(params, micro, jax.random.fold_in(key, j))
            n = aux["answer_tokens"]
            loss_sum, correct, count, total = carry
            total = jax.tree.map(lambda t, g: t + n * g.astype(t.dtype), total, grads)
            return (loss_sum + n * loss, correct + n * aux["accuracy"], count + n, total), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        start = (jnp.float32(0), jnp.float32(0), jnp.float32(0), zeros)
        (loss_sum, correct, count, total), _ = jax.lax.scan(
            one, start, (jnp.arange(microbatches), split_microbatches(batch, microbatches)))
        count = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g, p: (g / count).astype(p.dtype), total, params)
        return (loss_sum / count, {"accuracy": correct / count}), grads

    def train_step(state: dict, batch: dict, lr_scale: jax.Array | float | None = None):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        if microbatches > 1:
            (loss, aux), grads = accumulated(state["params"], batch, key)
        else:
            (loss, aux), grads = grad_of(state["params"], batch, key)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        if lr_scale is not None:
            # AdamW's update (weight decay included) is proportional to the learning rate:
            # scaling it is the step at lr_scale times the schedule's rate, moments unchanged
            updates = jax.tree.map(lambda u: u * jnp.asarray(lr_scale, u.dtype), updates)
        params = optax.apply_updates(state["params"], updates)
        metrics = {"loss": loss, "accuracy": aux["accuracy"],
                   "grad_norm": optax.tree.norm(grads)}
        return ({"params": params, "opt_state": opt_state, "step": state["step"] + 1,
                 "rng": state["rng"]}, metrics)

    return train_step


def make_answer_fn(graphdef: nnx.GraphDef, max_new_tokens: int,
                   stop_id: int | None = None) -> Callable:
    """(params, batch) -> greedy answer tokens [B, max_new_tokens] after the context (with
    `stop_id`, the end-of-answer token, generation stops once every row has produced it)."""

    def answer(params, batch):
        return greedy_answer(nnx.merge(graphdef, params), batch["context"],
                             batch["context_mask"], batch["question"], batch["question_length"],
                             max_new_tokens=max_new_tokens, stop_id=stop_id)

    return answer


def make_eval_step(graphdef: nnx.GraphDef) -> Callable:
    """(params, batch) -> {'loss', 'accuracy'} without dropout."""

    def eval_step(params, batch):
        loss, aux = loss_fn(nnx.merge(graphdef, params), batch)
        return {"loss": loss, "accuracy": aux["accuracy"]}

    return eval_step


def schedule_count(state: dict) -> int:
    """The optimizer's update count, which the learning-rate schedule reads: the step, less
    the steps undone by restoring a curriculum stage's best state."""
    counts = [s.count for s in jax.tree.leaves(
        state["opt_state"], is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
        if isinstance(s, optax.ScaleByScheduleState)]
    return int(jax.device_get(counts[0]))
