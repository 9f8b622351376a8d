r"""A tiny RMT learning qa1 in a haystack on a CPU: the first run to try.

    python -m launch.train --config=configs/quickstart.py --workdir=/tmp/rmt_quickstart
    tensorboard --logdir=/tmp/rmt_quickstart/tensorboard

2 layers, d 64, segments of 32 tokens with 4 memory tokens, curriculum 1 -> 2 -> 4
segments, batch 16; evaluation on qa1 at 0k and 1k. Kill it and run the same command
again: it resumes from the newest checkpoint.
"""

from __future__ import annotations

import ml_collections

from configs import rmt_babilong

VARIANTS = ("",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg  # one variant
    config = rmt_babilong.get_config("tiny,qa1")
    config.curriculum.segments = (1, 2, 4)  # up to 128 context tokens
    config.curriculum.stage_steps = 500  # steps per stage
    config.optim.learning_rate = 3e-4  # peak learning rate (moderate: see RESEARCH_NOTES)
    config.optim.warmup_steps = 100  # linear warm-up
    config.train.batch_size = 16  # global batch
    config.train.num_steps = 2000  # total steps
    config.train.log_every = 50  # steps between metric writes
    config.train.checkpoint_every = 250  # steps between checkpoints
    config.eval.every = 500  # steps between evaluations
    config.eval.lengths = "0k,1k,2k,4k"  # lengths evaluated (the final table)
    config.eval.num_samples = 50  # samples per task and length
    config.eval.batch_size = 25
    return config
