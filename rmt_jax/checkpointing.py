"""Checkpoints of a training run, the run's config, and restoring a model for inference.

Layout of a workdir (an `etils.epath` path: local, or gs://... and the other URIs epath
serves; see rmt_jax.files):

  config.json           the training ConfigDict
  model_config.json     the resolved `ModelConfig` (vocabulary size filled in)
  checkpoints/<step>/   the newest `keep` checkpoints, each with three items:
      params            the model parameters (an `nnx.State` of arrays)
      train             {'opt_state': optax state, 'step': int32 [], 'rng': uint32 key data}
      meta              JSON: step, data iterator state, curriculum state, metrics
  best/<step>/          the checkpoint with the best evaluation score (params + meta only,
                        a second `CheckpointManager` keeping one), for inference
  stage_best/<step>/    with `curriculum.advance_on='heldout'`: the current stage's best state
                        on its held-out set (params + optimizer), restored before the next
                        stage (rmt_jax.early_stopping)
  checkpoints_corrupt/  checkpoints that failed to read, set aside by training only

Resuming checks the run's config against the workdir's first (`check_config_change`): a
changed field stops the run with an error naming it, before anything is written. Fields in
`FREE_ON_RESUME` (logging, evaluation and checkpoint cadence, the mesh, the gradient's
microbatches, the scan's recomputation and unrolling) may change freely; others only when
named in `allow`; `PARAM_FIELDS` (parameter shapes and dtypes) never.
The config files are written once the checks have passed (`write_configs`).

Orbax writes each step to a temporary folder and renames it when complete, so a process
killed mid-save leaves no half checkpoint behind. When training finds a checkpoint that
fails to READ (corrupt files), it moves it to `checkpoints_corrupt/<dir>_<step>` (a new
name if that exists) with a warning and resumes from the previous one. A checkpoint that
reads but does not fit the model (another config) raises instead: nothing is moved.
Inference (`restore_for_inference`, evaluation, export) never moves anything.
"""

from __future__ import annotations

import dataclasses
import json
import logging as py_logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from rmt_jax import files
from rmt_jax.core.config import RETRIEVAL_FIELDS, ModelConfig
from rmt_jax.core.model import RMT

CONFIG_FILE = "config.json"
MODEL_CONFIG_FILE = "model_config.json"
LATEST_DIR = "checkpoints"
BEST_DIR = "best"
CORRUPT_DIR = "checkpoints_corrupt"
# ModelConfig fields that set the shapes or dtypes of the parameters: a checkpoint cannot be
# resumed under other values (tests/test_run_layer_resume.py holds this list to the model).
PARAM_FIELDS = ("layers", "d_model", "heads", "vocab_size", "mem_tokens", "max_positions",
                "memory", "d_mem", "retrieval_variant", "param_dtype", "positions",
                "write_positions", "tied_head", "canon_kernel")
# Config fields (or sections) that steer how often the run logs, evaluates and saves, how
# it is laid out on devices, or what the backward pass keeps and recomputes, but not what it
# computes: free to change on resume.
FREE_ON_RESUME = ("train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                  "train.async_checkpoint", "train.answer_rows", "train.microbatches", "eval",
                  "mesh", "model.remat_policy", "model.scan_unroll")


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


ABSENT = _Absent()  # a config field missing on one side of a comparison


class ConfigChangeError(ValueError):
    """The run's config differs from the config its workdir was trained with."""


class CheckpointMismatchError(ValueError):
    """A checkpoint reads, but holds arrays of other shapes than the model asks for."""


@dataclasses.dataclass
class Restored:
    step: int
    params: Any   # nnx.State
    train: Any    # {'opt_state', 'step', 'rng'} or None when not asked for
    meta: dict


def parse_step(step: str | int | None) -> str | int | None:
    """'best' -> 'best', 'latest'/None -> None (the newest), '1200' -> 1200."""
    if step is None or step == "latest":
        return None
    if step == "best":
        return "best"
    try:
        value = int(step)
    except (TypeError, ValueError):
        raise ValueError(f"unknown step {step!r}: expected 'best', 'latest' or a step "
                         "number") from None
    if value < 0:
        raise ValueError(f"step {value} must be >= 0")
    return value


def quiet_orbax_logs(quiet: bool = True) -> None:
    """Drops orbax's INFO lines (a dozen per save) from the absl log; warnings stay."""
    absl_logger = logging.get_absl_logger()
    for existing in [f for f in absl_logger.filters if isinstance(f, _OrbaxInfoFilter)]:
        absl_logger.removeFilter(existing)
    if quiet:
        absl_logger.addFilter(_OrbaxInfoFilter())


class _OrbaxInfoFilter(py_logging.Filter):
    def filter(self, record: py_logging.LogRecord) -> bool:
        return (record.levelno >= py_logging.WARNING
                or f"{os.sep}orbax{os.sep}" not in record.pathname)


# -- the run's config -----------------------------------------------------------------------
def _config_json(config: ml_collections.ConfigDict) -> str:
    return config.to_json_best_effort(indent=2, sort_keys=True)


def _model_config_json(model_config: ModelConfig) -> str:
    return json.dumps(dataclasses.asdict(model_config), indent=2, sort_keys=True)


def write_configs(workdir: str | os.PathLike, config: ml_collections.ConfigDict,
                  model_config: ModelConfig) -> None:
    """Writes config.json and model_config.json, each atomically (process 0 only)."""
    if jax.process_index() != 0:
        return
    workdir = files.run_path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    files.write_text(workdir / CONFIG_FILE, _config_json(config))
    files.write_text(workdir / MODEL_CONFIG_FILE, _model_config_json(model_config))


def read_configs(workdir: str | os.PathLike) -> tuple[ml_collections.ConfigDict, ModelConfig]:
    workdir = files.run_path(workdir)
    path = workdir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {workdir} a training workdir "
                                "(made by launch/train.py)?")
    config = ml_collections.ConfigDict(json.loads(path.read_text()))
    return config, ModelConfig.from_fields(json.loads((workdir / MODEL_CONFIG_FILE).read_text()))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def _covers(names: Iterable[str], field: str) -> bool:
    """Whether a field or one of its sections is among `names` ('optim' covers 'optim.b1')."""
    return any(field == n or field.startswith(n + ".") for n in names)


def config_changes(workdir: str | os.PathLike, config: ml_collections.ConfigDict,
                   model_config: ModelConfig) -> dict[str, tuple[Any, Any]]:
    """{field: (old, new)} where the run's config differs from the workdir's config files
    (empty when the workdir has none). Model fields are compared as resolved."""
    workdir = files.run_path(workdir)
    changes = {}
    path = workdir / CONFIG_FILE
    if path.exists():
        old = _flatten(json.loads(path.read_text()))
        new = _flatten(json.loads(_config_json(config)))
        changes.update({k: (old.get(k, ABSENT), new.get(k, ABSENT))
                        for k in sorted(old.keys() | new.keys())
                        if old.get(k, ABSENT) != new.get(k, ABSENT)})
    path = workdir / MODEL_CONFIG_FILE
    if path.exists():
        # read as today's fields, so a legacy spelling of the same model is no change
        old = json.loads(_model_config_json(ModelConfig.from_fields(json.loads(
            path.read_text()))))
        new = json.loads(_model_config_json(model_config))
        for k in sorted(old.keys() | new.keys()):
            if old.get(k, ABSENT) != new.get(k, ABSENT):
                changes[f"model.{k}"] = (old.get(k, ABSENT), new.get(k, ABSENT))
    return changes


def _has_checkpoints(workdir) -> bool:
    return any((workdir / name).is_dir() and any(p.name.isdigit() for p in
                                                 (workdir / name).iterdir())
               for name in (LATEST_DIR, BEST_DIR))


def check_config_change(workdir: str | os.PathLike, config: ml_collections.ConfigDict,
                        model_config: ModelConfig, allow: Sequence[str] = ()
                        ) -> dict[str, tuple[Any, Any]]:
    """Compares the run's config with the workdir's before a resume; returns the changes
    that are allowed (to log). Changes to `FREE_ON_RESUME` fields are always allowed; other
    fields when they or their section are named in `allow`; a change of the parameter
    shapes (`PARAM_FIELDS`) never, while the workdir holds checkpoints.

    Raises ConfigChangeError (a ValueError) naming each refused field as `old -> new`.
    """
    flat = _flatten(json.loads(_config_json(config)))
    sections = {k.rsplit(".", i)[0] for k in flat for i in range(k.count(".") + 1)}
    unknown = [a for a in allow if a not in sections]
    if unknown:
        raise ValueError(f"unknown config field {unknown[0]!r} in allow_config_change: "
                         "expected fields or sections of the config, e.g. train.num_steps, "
                         "optim")
    workdir = files.run_path(workdir)
    changes = config_changes(workdir, config, model_config)
    if not changes or not _has_checkpoints(workdir):
        if changes:
            logging.warning("workdir %s has no checkpoint: starting over with a changed "
                            "config (%s)", workdir, _describe(changes))
        return changes
    # A field that the code added (or dropped) since the workdir was made is taken as it is:
    # old workdirs stay resumable. (A checkpoint that does not fit still raises at restore.)
    # So is an RMT-R field now unset for a model without retrieval (a placeholder: old RMT
    # configs held RMT-R's retrieval_dropout of 0.1). Any other field set to None is a change
    # like any other (model.bptt_segments 4 -> None turns truncation off).
    unset = {f"model.{name}" for name in RETRIEVAL_FIELDS} if model_config.memory != "rmt_r" \
        else set()
    added = {k: v for k, v in changes.items()
             if ABSENT in v or (k in unset and v[1] is None)}
    if added:
        logging.warning("config fields added or dropped since %s was made: %s", workdir,
                        _describe(added))
    changes = {k: v for k, v in changes.items() if k not in added}
    shapes = {k: v for k, v in changes.items()
              if k.startswith("model.") and k.removeprefix("model.") in PARAM_FIELDS}
    # A config.json field whose resolved model field did not change is an ordinary change.
    refused = {k: v for k, v in changes.items()
               if not _covers(FREE_ON_RESUME, k) and not _covers(allow, k)}
    refused.update(shapes)
    if not refused:
        return changes
    message = [f"workdir {workdir} was trained with another config: {_describe(refused)}."]
    others = [k for k in refused if k not in shapes]
    allow_flag = f"--allow_config_change={','.join(others)}"
    if shapes:
        message.append(f"{', '.join(shapes)} set{'s' if len(shapes) == 1 else ''} the "
                       "parameter shapes, which the checkpoints here cannot take: train in a "
                       "new --workdir, or restore the original values.")
        if others:
            message.append(f"(The other fields could change deliberately with {allow_flag}.)")
    else:
        message.append("Restore the original values or train in a new --workdir; to change "
                       f"them deliberately (e.g. a longer schedule), pass {allow_flag}.")
    raise ConfigChangeError(" ".join(message))


def _describe(changes: dict[str, tuple[Any, Any]]) -> str:
    def text(value) -> str:
        return "(absent)" if value is ABSENT else json.dumps(value)

    return ", ".join(f"{k} {text(old)} -> {text(new)}"
                     for k, (old, new) in changes.items())


# -- checkpoints ----------------------------------------------------------------------------
def _abstract(tree):
    """ShapeDtypeStructs (keeping shardings) of a tree of arrays or ShapeDtypeStructs."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _leaf_name(path) -> str:
    names = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
    return "/".join(n for n in names if n != "value")


def _shapes(tree) -> dict[str, tuple[tuple[int, ...], str]]:
    return {_leaf_name(path): (tuple(x.shape), str(x.dtype))
            for path, x in jax.tree_util.tree_leaves_with_path(tree)}


class Checkpointer:
    """The newest `keep` checkpoints in workdir/checkpoints and the best one in workdir/best."""

    def __init__(self, workdir: str | os.PathLike, *, keep: int = 3, async_save: bool = True,
                 read_only: bool = False):
        """read_only: for inference: creates no folder, saves and deletes nothing."""
        self.workdir = files.run_path(workdir)
        self.async_save = async_save

        def options(keep: int) -> ocp.CheckpointManagerOptions:
            if read_only:
                return ocp.CheckpointManagerOptions(create=False, max_to_keep=None,
                                                    enable_async_checkpointing=False)
            return ocp.CheckpointManagerOptions(max_to_keep=keep,
                                                enable_async_checkpointing=async_save)

        self.latest = ocp.CheckpointManager(self.workdir / LATEST_DIR, options=options(keep),
                                            item_names=("params", "train", "meta"))
        self.best = ocp.CheckpointManager(self.workdir / BEST_DIR, options=options(1),
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
                best: bool = False, set_aside: bool = False) -> Restored | None:
        """The checkpoint at `step` (default: the newest that reads), or None if there is none.

        abstract_*: trees of arrays or ShapeDtypeStructs whose shardings the result takes.
        With `step` None, a checkpoint that fails to read is skipped with a warning for the
        next older one, and moved to checkpoints_corrupt/ when `set_aside` (training does
        that; inference moves nothing). A checkpoint that reads but holds other shapes
        raises CheckpointMismatchError; an explicit `step` that fails raises.
        """
        manager = self.best if best else self.latest
        steps = sorted(manager.all_steps(), reverse=True)
        items = {"params": abstract_params, "train": abstract_train}
        if step is not None:
            if step not in steps:
                raise FileNotFoundError(f"no checkpoint at step {step} in {manager.directory}: "
                                        f"steps there are {sorted(steps)}")
            try:
                return self._restore(manager, step, abstract_params, abstract_train)
            except Exception as e:  # noqa: BLE001 -- told apart below
                self._check_fit(manager, step, items)
                raise ValueError(f"checkpoint at step {step} in {manager.directory} does not "
                                 f"load ({type(e).__name__}: {e}): pick another step") from e
        for candidate in steps:
            try:
                return self._restore(manager, candidate, abstract_params, abstract_train)
            except Exception as e:  # noqa: BLE001 -- told apart below
                self._check_fit(manager, candidate, items)
                logging.warning("checkpoint at step %d in %s does not load (%s: %s); %s",
                                candidate, manager.directory, type(e).__name__, e,
                                f"moving it to {CORRUPT_DIR} and trying the previous one"
                                if set_aside else "trying the previous one")
                if set_aside:
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

    def _check_fit(self, manager, step: int, items: dict) -> None:
        """Raises CheckpointMismatchError when the checkpoint's own metadata reads and
        names arrays of other shapes or dtypes than `items`; returns otherwise (then the
        checkpoint failed to read: its files are damaged)."""
        for name, abstract in items.items():
            if abstract is None:
                continue
            reader = ocp.StandardCheckpointHandler()
            try:
                metadata = reader.metadata(files.run_path(manager.directory) / str(step) / name)
                saved = _shapes(getattr(metadata, "item_metadata", metadata))
            except Exception:  # noqa: BLE001 -- unreadable metadata: a damaged checkpoint
                return
            finally:
                reader.close()
            if not saved:
                return
            wanted = _shapes(_abstract(abstract))
            if saved == wanted:
                continue
            differ = sorted(k for k in saved.keys() | wanted.keys()
                            if saved.get(k) != wanted.get(k))
            first = differ[0]
            raise CheckpointMismatchError(
                f"checkpoint at step {step} in {manager.directory} holds {name} of other "
                f"shapes than the model config asks for ({len(differ)} arrays differ, e.g. "
                f"{first}: saved {saved.get(first)}, expected {wanted.get(first)}): it was "
                "saved under another model config. Use the config it was trained with, or "
                "a new workdir")

    def _set_aside(self, manager, step: int) -> None:
        if jax.process_index() == 0:
            directory = files.run_path(manager.directory)
            src = directory / str(step)
            corrupt = self.workdir / CORRUPT_DIR
            corrupt.mkdir(parents=True, exist_ok=True)
            dst, copy = corrupt / f"{directory.name}_{step}", 1
            while dst.exists():  # never over an earlier set-aside copy
                copy += 1
                dst = corrupt / f"{directory.name}_{step}.{copy}"
            try:
                src.rename(dst)
            except OSError as error:  # e.g. a store without folder renames: leave it there
                logging.warning("could not move %s to %s (%s); it stays in place", src, dst,
                                error)
        manager.reload()


def override_model_fields(config: ml_collections.ConfigDict, model_config: ModelConfig,
                          overrides: Mapping[str, Any]) -> tuple[ml_collections.ConfigDict,
                                                                 ModelConfig]:
    """A saved model's config with some fields changed that leave its parameters as they
    are (how it computes: `attention_chunk`, `attention_impl`, `scan_unroll`, ...); a
    ValueError naming the field for an unknown one or one of `PARAM_FIELDS`."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    for name in overrides:
        if name not in known:
            raise ValueError(f"model override {name!r}: ModelConfig has no such field "
                             f"(expected one of {', '.join(sorted(known - set(PARAM_FIELDS)))})")
        if name in PARAM_FIELDS:
            raise ValueError(f"model override {name!r}: it sets the parameters' shapes or "
                             "dtypes, which a trained checkpoint fixes; only fields of how the "
                             "model computes can change")
    if not overrides:
        return config, model_config
    model_config = dataclasses.replace(model_config, **overrides)  # validated there
    config = ml_collections.ConfigDict(config.to_dict())
    for name, value in overrides.items():
        if name in config.model:
            config.model[name] = value
    return config, model_config


def restore_for_inference(workdir: str | os.PathLike, step: int | str | None = None,
                          model_overrides: Mapping[str, Any] | None = None,
                          ) -> tuple[RMT, ml_collections.ConfigDict, int]:
    """(model, config, step) from a training workdir, parameters on the default device.

    step: None for the newest checkpoint that reads, an int for that step, 'best' for the
    best checkpoint (workdir/best). Moves nothing: a checkpoint that fails to read is
    skipped with a warning. model_overrides: saved model fields to change that leave the
    parameters as they are (`override_model_fields`), e.g. {'attention_chunk': 512}.
    """
    workdir = files.run_path(workdir)
    files.check_backend(workdir)
    config, model_config = read_configs(workdir)
    config, model_config = override_model_fields(config, model_config, model_overrides or {})
    abstract = nnx.eval_shape(lambda: RMT(model_config, rngs=nnx.Rngs(0)))
    graphdef, abstract_params = nnx.split(abstract)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract_params = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract_params)
    best = step == "best"
    checkpointer = Checkpointer(workdir, read_only=True)
    try:
        manager = checkpointer.best if best else checkpointer.latest
        steps = sorted(manager.all_steps())
        restored = checkpointer.restore(abstract_params, step=None if best else step, best=best)
    finally:
        checkpointer.close()
    if restored is None:
        where = workdir / (BEST_DIR if best else LATEST_DIR)
        if steps:
            raise FileNotFoundError(f"no checkpoint in {where} reads (steps {steps}; see the "
                                    "warnings above): the files are damaged")
        raise FileNotFoundError(f"no checkpoint in {where}: train longer, or pass another step")
    return nnx.merge(graphdef, restored.params), config, restored.step
