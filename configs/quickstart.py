r"""A tiny RMT learning qa1 in a haystack on a CPU: the first run to try.

    python -m launch.train --config=configs/quickstart.py --workdir=/tmp/rmt_quickstart
    tensorboard --logdir=/tmp/rmt_quickstart/tensorboard

The `quick` size (2 layers, d 64, segments of 32 tokens, 4 memory tokens), curriculum 1 -> 2
-> 4 -> 8 segments (900 steps each, the last stage to the end), batch 16, fresh simulated
qa1 stories in bAbI's own wording in the offline books, the question and answer in the last
segment (`model.answer_mode='in_context'`, the official formulation); evaluation on the
original qa1 test questions at 0k, 1k, 2k and 4k, whose table is printed at the end. About 7
minutes on 2 CPU cores. Kill it and run the same command again: it resumes from the newest
checkpoint. What it reaches, and what the levers did: results/ablation_qa1_cpu/README.md.
"""

from __future__ import annotations

import ml_collections

from configs import rmt_babilong

VARIANTS = ("",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg  # one variant
    config = rmt_babilong.get_config("quick,qa1")
    config.model.answer_mode = "in_context"  # question and answer end the last segment
    config.data.babi_synonyms = False  # stories in the bAbI files' own wording
    config.curriculum.segments = (1, 2, 4, 8)  # up to 256 context tokens
    config.curriculum.stage_steps = 900  # steps per stage
    config.optim.learning_rate = 6e-4  # peak learning rate
    config.optim.warmup_steps = 200  # linear warm-up
    config.train.batch_size = 16  # global batch
    config.train.num_steps = 4500  # total steps
    config.train.log_every = 100  # steps between metric writes
    config.train.checkpoint_every = 250  # steps between checkpoints
    config.eval.every = 1500  # steps between evaluations (and at the end)
    config.eval.lengths = "0k,1k,2k,4k"  # lengths evaluated (the final table)
    config.eval.num_samples = 100  # samples per task and length
    config.eval.batch_size = 50
    return config
