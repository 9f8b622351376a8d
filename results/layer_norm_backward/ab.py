r"""The training step with `model.layer_norm`'s written-out backward pass against the same
LayerNorm differentiated by JAX (the code before), compiled side by side in one process and
called alternately, so both see the same CPU. Prints the median and fastest call of each.
With --remat_policies the arms are those `model.remat_policy` values instead (every arm with
the written-out LayerNorm).

  python results/layer_norm_backward/ab.py --shape=tiny --rounds=15
  python results/layer_norm_backward/ab.py --shape=small --rounds=8
  python results/layer_norm_backward/ab.py --shape=qa1_cpu --rounds=8
  python results/layer_norm_backward/ab.py --shape=qa1_cpu --segments=16 --rounds=5 \
      --remat_policies=none,dots_saveable,dots_with_no_batch_dims_saveable,full

tiny / small: `launch.benchmark_rmt --mode=train --batch=4 --segments=8 --dtype=fp32`'s step
(GPT-2's vocabulary, 8 memory tokens, the LM head at 4 answer slots). qa1_cpu: the model of
`configs/qa1_cpu.py` (d 128, 2 layers, 4 heads, RoPE, 1 memory token) with a 4,096-token
vocabulary, batch 32, 8 segments of 128 tokens, its optimizer's AdamW at 1e-3.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rmt_jax import host_memory, loss_fn
from rmt_jax.core import model as rmt_model
from rmt_jax.core.config import get_config

WRITTEN_OUT = rmt_model.layer_norm


def autodiff_layer_norm(x, scale, bias, dtype):
    """LayerNorm as `LayerNorm.__call__` computed it before, left to JAX to differentiate."""
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + rmt_model.LAYER_NORM_EPSILON)
    return (y * scale.astype(jnp.float32) + bias).astype(dtype)


SHAPES = {  # preset, config overrides, batch, answer slots
    "tiny": ("tiny", {}, 4, 4),
    "small": ("small", {}, 4, 4),
    "qa1_cpu": ("quick", dict(d_model=128, heads=4, positions="rope", mem_tokens=1,
                              segment_len=128, max_positions=192, vocab_size=4096), 32, 2),
}


def compiled_step(shape: str, layer_norm, segments: int = 8, remat_policy: str = "none"):
    rmt_model.layer_norm = layer_norm  # read when the step is traced, below
    preset, overrides, batch, slots = SHAPES[shape]
    cfg = get_config(preset, dtype="float32", param_dtype="float32", remat_policy=remat_policy,
                     **overrides)
    model = rmt_model.RMT(cfg, rngs=nnx.Rngs(0))
    lr = 1e-3 if shape == "qa1_cpu" else 1e-5
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr, weight_decay=0.01))
    graphdef, state = nnx.split((model, nnx.Optimizer(model, tx, wrt=nnx.Param)))
    rng = np.random.default_rng(0)
    query = rng.integers(0, cfg.vocab_size, (batch, 16)).astype(np.int32)
    loss_mask = np.zeros(query.shape, np.float32)
    loss_mask[:, -slots:] = 1.0
    data = dict(context=rng.integers(0, cfg.vocab_size, (batch, segments * cfg.segment_len)).astype(
        np.int32), query=query, loss_mask=loss_mask, answer=query[:, -slots:])

    def step(state, data):
        model, optimizer = nnx.merge(graphdef, state)
        (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, data)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    compiled = jax.jit(step, donate_argnums=0).lower(state, data).compile()
    rmt_model.layer_norm = WRITTEN_OUT
    return compiled, state, data


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=list(SHAPES), default="tiny")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--segments", type=int, default=8)
    parser.add_argument("--remat_policies", default="",
                        help="comma-separated model.remat_policy values to compare")
    args = parser.parse_args()
    host_memory.keep()  # as the launchers run
    if args.remat_policies:
        runs = {f"remat {p}": list(compiled_step(args.shape, WRITTEN_OUT, args.segments, p))
                for p in args.remat_policies.split(",")}
    else:
        arms = {"autodiff (before)": autodiff_layer_norm, "written out (now)": WRITTEN_OUT}
        runs = {name: list(compiled_step(args.shape, f, args.segments))
                for name, f in arms.items()}
    times = {name: [] for name in runs}
    losses = {}
    for r in range(args.rounds + 1):  # round 0 warms up
        for name, run in runs.items():
            compiled, state, data = run
            start = time.perf_counter()
            run[1], loss = compiled(state, data)
            jax.block_until_ready(loss)
            if r:
                times[name].append(time.perf_counter() - start)
            losses[name] = float(loss)
    for name, t in times.items():
        print(f"{args.shape:8s} x{args.segments:<3d} {name:18s} "
              f"median {statistics.median(t) * 1e3:8.1f} ms  "
              f"fastest {min(t) * 1e3:8.1f} ms  loss after {args.rounds + 1} steps "
              f"{losses[name]:.6f}")


if __name__ == "__main__":
    main()
