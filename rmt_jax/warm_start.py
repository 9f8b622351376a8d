"""Start a run from one of this project's trained models (`config.model.init_from=FOLDER`).

FOLDER is a training workdir (its newest checkpoint) or an exported model
(`launch.export_checkpoint`: its `best/` checkpoint): anything holding `model_config.json`.
The new run's model may differ from it in the memory: a backbone trained with RMT can start
RMT-R (the retrieval block starts fresh), ARMT (the associative layers start fresh, W_v at
zero, so nothing is stored at first; its segments hold no read-memory tokens, so even the
first segment is not computed exactly as the RMT backbone computed it) or full attention
(the memory embedding is dropped). Every parameter the two models share is copied; the
memory embedding and learned positions copy the rows both have (RMT-R's official block
learns 2N first-read rows, RMT has N; a full-attention window needs more positions than a
segment), the run's further rows stay as drawn.

Contract:
  is_rmt_model(init_from) -> bool               a folder with model_config.json
  open_checked(init_from, model_config, config) -> RmtCheckpoint
        reads the two config files only, and raises ValueError naming every mismatch
        (layers, d_model, heads, vocabulary, positions, tokenizer, any shared parameter of
        another shape) before anything is compiled, read or written
  load_params(ckpt, params, model_config) -> nnx.State
        a copy of the fresh run's nnx.Param state with the checkpoint's parameters in it,
        cast to the run's dtype, each leaf keeping its sharding

As with GPT-2 weights (rmt_jax.pretrained), the parameters load on a fresh start only; a
resume restores its own checkpoint. The optimizer, the data stream and the curriculum
start fresh.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from rmt_jax import checkpointing, sharding
from rmt_jax.core.config import ModelConfig
from rmt_jax.core.model import RMT
from rmt_jax.pretrained import _key

# ModelConfig fields the two models must share for the backbone to mean the same thing.
BACKBONE_FIELDS = ("layers", "d_model", "heads", "vocab_size", "positions")
# Row tables that may differ in length (RMT-R learns 2N first-read memory rows, RMT N; a
# longer window needs more learned positions): the rows both have are copied.
ROWS = (("memory",), ("wpe",))
# A run's parameter that a source lacks, copied from another of the source's: an untied LM
# head (model.tied_head=False) starts as a tied source's head, its token embedding.
STAND_INS = {("lm_head",): ("wte",)}


@dataclasses.dataclass(frozen=True)
class RmtCheckpoint:
    source: str                      # what init_from named
    folder: Path
    step: int | str | None           # None: the newest in checkpoints/; 'best': best/
    model_config: ModelConfig        # the source model's
    copied: tuple[tuple, ...]        # parameter paths copied whole
    partial: tuple[tuple, ...]       # ROWS of other lengths: the rows both have copied
    fresh: tuple[tuple, ...]         # the run's parameters the source lacks
    dropped: tuple[tuple, ...]       # the source's parameters the run lacks


def is_rmt_model(init_from: str) -> bool:
    return (Path(init_from).expanduser() / checkpointing.MODEL_CONFIG_FILE).is_file()


def _param_shapes(cfg: ModelConfig) -> dict[tuple, tuple[int, ...]]:
    abstract = nnx.eval_shape(lambda: RMT(cfg, rngs=nnx.Rngs(0)))
    state = nnx.state(abstract, nnx.Param)
    return {_key(p): tuple(x.shape)
            for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}


def _name(key: tuple) -> str:
    return "/".join(map(str, key))


def open_checked(init_from: str, cfg: ModelConfig,
                 config: ml_collections.ConfigDict) -> RmtCheckpoint:
    """The source's configs read and checked against the run's; no arrays read."""
    folder = Path(init_from).expanduser()
    where = f"init_from={init_from!r}"
    try:
        src_config, src = checkpointing.read_configs(folder)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{where}: its {checkpointing.MODEL_CONFIG_FILE} or "
                         f"{checkpointing.CONFIG_FILE} does not read ({type(e).__name__}: {e})"
                         ) from e
    if any((folder / checkpointing.LATEST_DIR).glob("[0-9]*")):
        step = None
    elif any((folder / checkpointing.BEST_DIR).glob("[0-9]*")):
        step = "best"
    else:
        raise ValueError(f"{where} holds no checkpoint ({checkpointing.LATEST_DIR}/ and "
                         f"{checkpointing.BEST_DIR}/ are empty or missing): pass a training "
                         "workdir or a folder written by launch.export_checkpoint")
    problems = [f"{f}: the checkpoint has {getattr(src, f)!r}, this run {getattr(cfg, f)!r} "
                f"(set --config.model.{f}={getattr(src, f)})"
                for f in BACKBONE_FIELDS if getattr(src, f) != getattr(cfg, f)]
    theirs, ours = src_config.data.get("tokenizer"), config.data.get("tokenizer")
    synthetic = src_config.data.get("synthetic", False) or config.data.get("synthetic", False)
    if not synthetic and theirs != ours:
        problems.append(f"tokenizer: the checkpoint was trained with {theirs!r}, this run uses "
                        f"{ours!r} (set --config.data.tokenizer={theirs})")
    copied = partial = fresh = dropped = ()
    if not problems:
        src_shapes, run_shapes = _param_shapes(src), _param_shapes(cfg)
        for key in sorted(src_shapes.keys() & run_shapes.keys(), key=_name):
            a, b = src_shapes[key], run_shapes[key]
            if key in ROWS and a[1:] == b[1:]:
                continue
            if a != b:
                problems.append(f"{_name(key)} has shape {a} in the checkpoint, {b} in this run")
        copied = tuple(sorted((k for k in src_shapes.keys() & run_shapes.keys()
                               if src_shapes[k] == run_shapes[k]), key=_name))
        partial = tuple(k for k in ROWS if k in src_shapes and k in run_shapes
                        and src_shapes[k] != run_shapes[k])
        stand_ins = tuple(k for k in run_shapes.keys() - src_shapes.keys()
                          if STAND_INS.get(k) in src_shapes)
        copied = (*copied, *stand_ins)
        fresh = tuple(sorted(run_shapes.keys() - src_shapes.keys() - set(stand_ins), key=_name))
        dropped = tuple(sorted(src_shapes.keys() - run_shapes.keys(), key=_name))
    if problems:
        raise ValueError(f"{where} (model_config.json: memory={src.memory!r}) does not fit "
                         "this run's model: " + "; ".join(problems))
    return RmtCheckpoint(str(init_from), folder, step, src, copied, partial, fresh, dropped)


def load_params(ckpt: RmtCheckpoint, params: nnx.State, cfg: ModelConfig) -> nnx.State:
    """A copy of `params` with the checkpoint's parameters in it (see the module doc)."""
    model, _, step = checkpointing.restore_for_inference(ckpt.folder, ckpt.step)
    source = {_key(p): np.asarray(x, np.float32) for p, x in
              jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]}
    del model
    for key, stand_in in STAND_INS.items():  # e.g. a tied source's head: its wte
        if key not in source and stand_in in source:
            source[key] = source[stand_in]

    def replace(path, leaf):
        key = _key(path)
        if key not in source:
            return leaf
        value = source[key]
        if value.shape != leaf.shape:  # ROWS: the rows both have; the run's others as drawn
            # on the devices, in the leaf's sharding: its rows may live on other hosts
            return sharding.set_leading_rows(leaf, value[:leaf.shape[0]])
        return sharding.place_like(value, leaf)

    new = jax.tree_util.tree_map_with_path(replace, params)
    logging.info("initialised from %s (step %s, memory=%s): %d parameters copied whole; the "
                 "rows both have of %s; fresh: %s; dropped: %s", ckpt.source, step,
                 ckpt.model_config.memory, len(ckpt.copied),
                 ", ".join(map(_name, ckpt.partial)) or "none",
                 ", ".join(map(_name, ckpt.fresh)) or "none",
                 ", ".join(map(_name, ckpt.dropped)) or "none")
    return new
