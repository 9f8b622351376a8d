r"""Exports a trained model as a small inference workdir: configs + parameters, no optimizer.

    python -m launch.export_checkpoint --workdir=/tmp/rmt_qa1 --out_dir=/tmp/rmt_qa1_export \
        --step=latest --param_dtype=bfloat16

The result is a workdir that `launch.evaluate --workdir=OUT --step=best`, the attention-map
notebook and `rmt_jax.checkpointing.restore_for_inference(OUT, 'best')` read like any other:
`config.json`, `model_config.json` and `best/<step>/` (parameters and meta). With
`--param_dtype=bfloat16` the parameters are stored in bfloat16 (half the bytes; compute keeps
the config's dtype). The folder is written beside OUT and renamed when complete, so an
interrupted export leaves nothing at OUT.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import uuid

import jax
from absl import app, flags, logging
from flax import nnx

from rmt_jax import checkpointing, files
from rmt_jax.checkpointing import parse_step
from rmt_jax.core.model import RMT

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir to export from.", required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "New folder for the export.", required=True)
_STEP = flags.DEFINE_string("step", "latest", "'latest', 'best' or a step number.")
_PARAM_DTYPE = flags.DEFINE_enum("param_dtype", "", ["", "float32", "bfloat16"],
                                 "Store the parameters in this dtype ('' keeps the config's).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing OUT_DIR.")

__all__ = ["export", "parse_step"]


def export(workdir: str, out_dir: str, *, step: int | str | None = None, param_dtype: str = "",
           overwrite: bool = False):
    """Writes the export; returns its path (an `epath.Path`; gs://... stays remote). Raises
    FileExistsError rather than overwrite. Reads the workdir only: moves nothing there."""
    out = files.run_path(out_dir)
    files.check_backend(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: pick another --out_dir or pass --overwrite")
    model, config, restored_step = checkpointing.restore_for_inference(workdir, step)
    model_config = model.config
    state = nnx.state(model)
    if param_dtype and param_dtype != model_config.param_dtype:
        model_config = dataclasses.replace(model_config, param_dtype=param_dtype)
        with config.unlocked():
            config.model.param_dtype = param_dtype
        abstract = nnx.state(nnx.eval_shape(lambda: RMT(model_config, rngs=nnx.Rngs(0))))
        state = jax.tree.map(lambda x, a: x.astype(a.dtype), state, abstract)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex}"
    try:
        checkpointing.write_configs(tmp, config, model_config)
        checkpointer = checkpointing.Checkpointer(tmp, async_save=False)
        try:
            checkpointer.save_best(restored_step, state, dict(
                step=restored_step, exported_from=os.fspath(files.run_path(workdir)),
                param_dtype=model_config.param_dtype))
            checkpointer.wait()
        finally:
            checkpointer.close()
        if (tmp / checkpointing.LATEST_DIR).exists():  # made empty by the Checkpointer
            (tmp / checkpointing.LATEST_DIR).rmtree()
        if out.exists():
            out.rmtree()
        tmp.rename(out)
    finally:
        if tmp.exists():
            tmp.rmtree()
    logging.info("exported step %d of %s to %s", restored_step, workdir, out)
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    checkpointing.quiet_orbax_logs()
    try:
        out = export(_WORKDIR.value, _OUT_DIR.value, step=parse_step(_STEP.value),
                     param_dtype=_PARAM_DTYPE.value, overwrite=_OVERWRITE.value)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    size = sum((root / name).stat().length for root, _, names in out.walk() for name in names)
    print(f"exported to {out} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    app.run(main)
