r"""Trains RMT / RMT-R on BABILong; resumes from the newest checkpoint in --workdir.

    python -m launch.train --config=configs/rmt_babilong.py:small,qa1 --workdir=/tmp/rmt_qa1
    python -m launch.train --config=configs/quickstart.py --workdir=/tmp/rmt_quickstart
    python -m launch.train --config=configs/rmt_babilong.py:gpt2_small,qa1,retrieval \
        --workdir=gs://BUCKET/rmt_r_qa1 --multihost

Any config field can be overridden (`--config.optim.learning_rate=3e-4`). SIGTERM saves a
checkpoint and exits 0; a non-finite loss exits non-zero with the step in the message.
"""

from __future__ import annotations

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from rmt_jax import train_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training configuration, e.g. configs/rmt_babilong.py:small,qa1.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and config.json go here.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() first (one process per host; the "
    "coordinator is found from the cluster environment: TPU pods, SLURM, ...).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _MULTIHOST.value:
        jax.distributed.initialize()
    logging.info("JAX process %d of %d, local devices %s", jax.process_index(),
                 jax.process_count(), jax.local_devices())
    logging.info("config:\n%s", _CONFIG.value)
    train_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
