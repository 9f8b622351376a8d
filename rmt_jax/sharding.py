"""The device mesh and where every array of a training run lives on it.

A ('data', 'model') mesh: batches split over 'data'; attention heads, the MLP's hidden
units and the vocabulary split over 'model' (Megatron-style), everything else replicated.
Every parameter of `rmt_jax.core.model.RMT` is named in one of the two tables below, so a
parameter that is renamed or added without a rule is an error on a mesh whose 'model' axis
is larger than 1, instead of being silently replicated.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

# Parameters split over the 'model' axis: (parent, name) or (name,) -> spec of each dim.
MODEL_AXIS_RULES: dict[tuple[str, ...], tuple[str | None, ...]] = {
    ("attn", "qkv"): (None, None, "model", None),   # [d, 3, heads, hd]: heads
    ("attn", "qkv_bias"): (None, "model", None),     # [3, heads, hd]
    ("attn", "out"): ("model", None, None),          # [heads, hd, d]: heads (input side)
    ("mlp", "fc"): (None, "model"),                  # [d, 4d]
    ("mlp", "fc_bias"): ("model",),                  # [4d]
    ("mlp", "proj"): ("model", None),                # [4d, d]
    ("wte",): ("model", None),                       # [vocab, d]
    ("lm_head",): ("model", None),                   # [vocab, d] (tied_head=False)
}


# Parameters kept whole on every device: (parent, name), (name,) or (parent,) for a module
# all of whose parameters are replicated. Small next to the split ones.
REPLICATED: frozenset[tuple[str, ...]] = frozenset({
    ("scale",), ("bias",),                           # LayerNorms
    ("attn", "out_bias"), ("mlp", "proj_bias"),      # [d]: added after the reduction
    ("memory",), ("wpe",),                           # [N, d], [positions, d]
    ("retrieval",),                                  # RMT-R's d x d projections
    ("associative",),                                # ARMT's d x d_mem and d x d projections
    ("canon_attn",), ("canon_mlp",),                 # Canon layers' [K, d] taps
    ("rng",),                                        # the run's RNG key (not a parameter)
})


# -- mesh and sharding ----------------------------------------------------------------------
def make_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    """A ('data', 'model') mesh of config.mesh sizes (-1: the devices the other axis leaves)."""
    devices = jax.devices()
    data, model = int(config.mesh.data), int(config.mesh.model)
    if model == -1 and data == -1:
        raise ValueError("config.mesh.data and config.mesh.model are both -1: fix one of them")
    if model == -1:
        model = len(devices) // data
    if data == -1:
        data = len(devices) // model
    if data < 1 or model < 1 or data * model > len(devices):
        raise ValueError(f"mesh data={config.mesh.data} x model={config.mesh.model} does not "
                         f"fit {len(devices)} devices: pick sizes whose product divides it")
    if data * model < len(devices):
        logging.warning("mesh %dx%d uses %d of %d devices", data, model, data * model,
                        len(devices))
    return jax.make_mesh((data, model), ("data", "model"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 2,
                         devices=devices[: data * model])


def path_names(path) -> tuple[str, ...]:
    """The string keys of a pytree path: ('blocks', 'attn', 'qkv') for blocks/0/attn/qkv."""
    names = []
    for k in path:
        name = getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))
        if isinstance(name, str) and name != "value":
            names.append(name)
    return tuple(names)


def _replicated(names: tuple[str, ...]) -> bool:
    return (names[-2:] in REPLICATED or names[-1:] in REPLICATED
            or any((name,) in REPLICATED for name in names[:-1]))


def partition_spec(path, shape: tuple[int, ...], model_size: int) -> P:
    """The PartitionSpec of a parameter (or an optimizer moment) at `path`.

    Raises a ValueError, when `model_size` > 1, for an array named in neither table."""
    names = path_names(path)
    spec = MODEL_AXIS_RULES.get(names[-2:]) or MODEL_AXIS_RULES.get(names[-1:])
    if model_size == 1 or not shape:
        return P()
    if spec is None:
        if _replicated(names) or not names:
            return P()
        raise ValueError(f"parameter {'/'.join(names)} {tuple(shape)} has no sharding rule: add "
                         "it to MODEL_AXIS_RULES (split over 'model') or REPLICATED in "
                         "rmt_jax/sharding.py")
    if len(spec) != len(shape):
        return P()
    if any(axis is not None and dim % model_size for axis, dim in zip(spec, shape, strict=True)):
        return P()  # not divisible: replicate
    return P(*spec)


def state_shardings(abstract_state, mesh: jax.sharding.Mesh):
    """NamedShardings for every leaf of the train state."""
    model_size = mesh.shape["model"]
    return jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(mesh, partition_spec(path, x.shape, model_size)),
        abstract_state)


def global_batch(batch: dict, sharding: NamedSharding) -> dict:
    """Per-process numpy batches -> global arrays split over 'data'."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items()}


def place_like(value: np.ndarray, like: jax.Array) -> jax.Array:
    """A host array (the same on every process) as `like`'s dtype, shape and sharding: each
    process places only its own shards."""
    value = np.asarray(value).astype(like.dtype)
    return jax.make_array_from_callback(like.shape, like.sharding, lambda i: value[i])


def set_leading_rows(array: jax.Array, rows: np.ndarray) -> jax.Array:
    """`array` with its first len(rows) rows replaced by `rows` (a host array, the same on
    every process), computed on the devices in `array`'s sharding: no process needs the
    rows of `array` that other hosts hold."""
    return jax.jit(lambda x: x.at[:len(rows)].set(rows.astype(x.dtype)),
                   out_shardings=array.sharding)(array)
