"""Checkpoints of a training run, and restoring a trained model for inference.

Layout of a workdir:

  config.json           the training ConfigDict (written once at the start)
  model_config.json     the resolved `ModelConfig` (vocabulary size filled in)
  checkpoints/<step>/   the newest `keep` checkpoints, each with three items:
      params            the model parameters (an `nnx.State` of arrays)
      train             {'opt_state': optax state, 'step': int32 [], 'rng': uint32 key data}
      meta              JSON: step, data iterator state, curriculum state, metrics
  best/<step>/          the checkpoint with the best evaluation score (params + meta only,
                        a second `CheckpointManager` keeping one), for inference

Orbax writes each step to a temporary folder and renames it when complete, so a process
killed mid-save leaves no half checkpoint behind. A checkpoint that fails to load (corrupt
files) is moved to `checkpoints_corrupt/` with a warning and the previous one is used.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from rmt_jax.config import ModelConfig
from rmt_jax.model import RMT

CONFIG_FILE = "config.json"
MODEL_CONFIG_FILE = "model_config.json"
LATEST_DIR = "checkpoints"
BEST_DIR = "best"
CORRUPT_DIR = "checkpoints_corrupt"


@dataclasses.dataclass
class Restored:
    step: int
    params: Any   # nnx.State
    train: Any    # {'opt_state', 'step', 'rng'} or None when not asked for
    meta: dict


def write_configs(workdir: str | os.PathLike, config: ml_collections.ConfigDict,
                  model_config: ModelConfig) -> None:
    """Writes config.json and model_config.json (process 0 only)."""
    if jax.process_index() != 0:
        return
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    (workdir / MODEL_CONFIG_FILE).write_text(
        json.dumps(dataclasses.asdict(model_config), indent=2, sort_keys=True))


def read_configs(workdir: str | os.PathLike) -> tuple[ml_collections.ConfigDict, ModelConfig]:
    workdir = Path(workdir)
    path = workdir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {workdir} a training workdir "
                                "(made by launch/train.py)?")
    config = ml_collections.ConfigDict(json.loads(path.read_text()))
    fields = json.loads((workdir / MODEL_CONFIG_FILE).read_text())
    fields["attention_map_layers"] = tuple(fields.get("attention_map_layers", ()))
    return config, ModelConfig(**fields)


def _abstract(tree):
    """ShapeDtypeStructs (keeping shardings) of a tree of arrays or ShapeDtypeStructs."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
    """The newest `keep` checkpoints in workdir/checkpoints and the best one in workdir/best."""

    def __init__(self, workdir: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
        self.workdir = Path(workdir).absolute()
        self.async_save = async_save
        self.latest = ocp.CheckpointManager(
            self.workdir / LATEST_DIR,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep,
                                                 enable_async_checkpointing=async_save),
            item_names=("params", "train", "meta"))
        self.best = ocp.CheckpointManager(
            self.workdir / BEST_DIR,
            options=ocp.CheckpointManagerOptions(max_to_keep=1,
                                                 enable_async_checkpointing=async_save),
            item_names=("params", "meta"))

    # -- saving ---------------------------------------------------------------------------
    def save(self, step: int, params, train, meta: dict) -> None:
        """Saves (asynchronously when configured); returns once the arrays are copied."""
        self.latest.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), train=ocp.args.StandardSave(train),
            meta=ocp.args.JsonSave(meta)), force=True)

    def save_best(self, step: int, params, meta: dict) -> None:
        if step in self.best.all_steps():
            return
        self.best.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)), force=True)

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()

    # -- restoring ------------------------------------------------------------------------
    def best_meta(self) -> dict | None:
        """The meta of the best checkpoint (with its score), or None when there is none."""
        step = self.best.latest_step()
        if step is None:
            return None
        return self.best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
            "meta"]

    def restore(self, abstract_params, abstract_train=None, *, step: int | None = None,
                best: bool = False) -> Restored | None:
        """The checkpoint at `step` (default: the newest that loads), or None if there is none.

        abstract_*: trees of arrays or ShapeDtypeStructs whose shardings the result takes.
        A checkpoint that fails to load is set aside with a warning when `step` is None and
        the next older one is tried; an explicit `step` that fails raises.
        """
        manager = self.best if best else self.latest
        steps = sorted(manager.all_steps(), reverse=True)
        if step is not None:
            if step not in steps:
                raise FileNotFoundError(f"no checkpoint at step {step} in {manager.directory}: "
                                        f"steps there are {sorted(steps)}")
            return self._restore(manager, step, abstract_params, abstract_train)
        for candidate in steps:
            try:
                return self._restore(manager, candidate, abstract_params, abstract_train)
            except Exception as e:  # noqa: BLE001 -- any failure to read means corrupt
                logging.warning("checkpoint at step %d in %s does not load (%s: %s); moving it "
                                "to %s and trying the previous one", candidate,
                                manager.directory, type(e).__name__, e, CORRUPT_DIR)
                self._set_aside(manager, candidate)
        return None

    def _restore(self, manager, step, abstract_params, abstract_train) -> Restored:
        items = {"params": ocp.args.StandardRestore(_abstract(abstract_params)),
                 "meta": ocp.args.JsonRestore()}
        if abstract_train is not None:
            items["train"] = ocp.args.StandardRestore(_abstract(abstract_train))
        out = manager.restore(step, args=ocp.args.Composite(**items))
        if out["meta"] is None or int(out["meta"]["step"]) != step:
            raise ValueError(f"meta of step {step} is missing or names another step")
        return Restored(step=step, params=out["params"], train=out.get("train"),
                        meta=out["meta"])

    def _set_aside(self, manager, step: int) -> None:
        if jax.process_index() == 0:
            src = Path(manager.directory) / str(step)
            dst = self.workdir / CORRUPT_DIR / f"{Path(manager.directory).name}_{step}"
            if dst.exists():
                shutil.rmtree(dst)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), str(dst))
        manager.reload()


def restore_for_inference(workdir: str | os.PathLike, step: int | str | None = None,
                          ) -> tuple[RMT, ml_collections.ConfigDict, int]:
    """(model, config, step) from a training workdir, parameters on the default device.

    step: None for the newest checkpoint that loads, an int for that step, 'best' for the
    best checkpoint (workdir/best).
    """
    config, model_config = read_configs(workdir)
    abstract = nnx.eval_shape(lambda: RMT(model_config, rngs=nnx.Rngs(0)))
    graphdef, abstract_params = nnx.split(abstract)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract_params = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract_params)
    best = step == "best"
    checkpointer = Checkpointer(workdir, async_save=False)
    try:
        restored = checkpointer.restore(abstract_params, step=None if best else step, best=best)
    finally:
        checkpointer.close()
    if restored is None:
        where = Path(workdir) / (BEST_DIR if best else LATEST_DIR)
        raise FileNotFoundError(f"no checkpoint in {where}: train longer, or pass another step")
    return nnx.merge(graphdef, restored.params), config, restored.step
