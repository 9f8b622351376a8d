r"""Trains RMT / RMT-R / ARMT (or the full-attention baseline) on BABILong; resumes from the
newest checkpoint in --workdir.

    python -m launch.train --config=configs/rmt_babilong.py:small,qa1 --workdir=/tmp/rmt_qa1
    python -m launch.train --config=configs/quickstart.py --workdir=/tmp/rmt_quickstart
    python -m launch.train --config=configs/rmt_babilong.py:gpt2_small,qa1,retrieval \
        --workdir=gs://BUCKET/rmt_r_qa1 --multihost

Any config field can be overridden (`--config.optim.learning_rate=3e-4`). Rerun the same
command to resume; a config that differs from the workdir's stops with an error naming the
changed fields. To change fields deliberately on resume (a longer schedule, another
learning rate), name them: `--config.train.num_steps=40000 --allow_config_change=
train.num_steps`. Fields that set the parameter shapes (model.d_model, model.mem_tokens, ...)
cannot change in a workdir.

SIGTERM saves a checkpoint first and exits 0; a non-finite loss exits non-zero with the step
in the message; bad arguments exit 1 with an `error:` line before anything is written.
"""

from __future__ import annotations

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from rmt_jax import checkpointing, host_memory, train_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training configuration, e.g. configs/rmt_babilong.py:small,qa1.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and config.json go here.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() first (one process per host; the "
    "coordinator is found from the cluster environment: TPU pods, SLURM, ...).")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_list(
    "allow_config_change", [], "Config fields (or sections, e.g. optim) that may differ from "
    "the config the workdir was trained with, e.g. train.num_steps,optim.learning_rate. "
    "Parameter-shape fields (model.d_model, model.mem_tokens, ...) never may.")
_ORBAX_LOGS = flags.DEFINE_bool("orbax_logs", False,
                                "Keep orbax's INFO lines (a dozen per checkpoint) in the log.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    host_memory.keep()  # before JAX starts its CPU client
    if _MULTIHOST.value:
        jax.distributed.initialize()
    logging.info("JAX process %d of %d, local devices %s", jax.process_index(),
                 jax.process_count(), jax.local_devices())
    logging.info("config:\n%s", _CONFIG.value)
    checkpointing.quiet_orbax_logs(not _ORBAX_LOGS.value)
    try:
        train_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                     allow_config_change=_ALLOW_CONFIG_CHANGE.value)
    except (ValueError, OSError) as e:
        logging.debug("the error's traceback (shown with --verbosity=1)", exc_info=True)
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
