r"""The memory variants side by side on qa1: `qa1_cpu`'s recipe with one change, the memory.

    python -m launch.train --config=configs/compare_qa1_cpu.py:armt --workdir=/tmp/cmp_armt

The argument names the memory: `rmt` (qa1_cpu as it is), `rmt_r` (self-retrieval over past
memory states, the official block), `rmt_r_shared` (RMT-R with this project's earlier block:
one LayerNorm, no biases, no learned first read), `armt` (associative memory in every
layer, d_mem = d_model / 4) or `full` (no memory: the backbone over one window of 4,096
tokens, as long as the curriculum's longest stage; a longer input is read through its last
4,096 tokens). Everything else is qa1_cpu's:
the model, the curriculum (two-fact bare stories, bare stories, then 1..32 segments of 128
tokens; the committed comparison ran before the two-fact stage), the optimizer,
the seed. No evaluation during training: the comparison spends its minutes on training and
evaluates afterwards (results/compare_qa1_cpu/README.md has the commands).

`VARIANT,warm` trains the memory itself: every arm starts from the same backbone
(`BACKBONE`, qa1_cpu's first two stages, bare stories then one segment of book text: it
knows the lookup, and no memory path was ever trained) and goes straight to contexts of up
to 2, 4 and 8 segments (1,000 steps a stage at most, then 8 to the end). The memory's own
parameters start fresh (rmt_jax.warm_start); results/compare_qa1_cpu/warm/README.md.

    python -m launch.train --config=configs/compare_qa1_cpu.py:armt,warm --workdir=/tmp/warm_armt
"""

from __future__ import annotations

import ml_collections

from configs import qa1_cpu

MEMORIES = ("rmt", "rmt_r", "rmt_r_shared", "armt", "full")
VARIANTS = MEMORIES + tuple(f"{m},warm" for m in MEMORIES)
# qa1_cpu's stages 0 and 1 (6,000 steps), exported: the shared start of the `warm` arms
BACKBONE = "results/compare_qa1_cpu/warm/backbone"


def get_config(arg: str | None = "rmt") -> ml_collections.ConfigDict:
    variant, _, warm = (arg or "rmt").partition(",")
    if variant not in MEMORIES or warm not in ("", "warm"):
        raise ValueError(f"unknown variant {arg!r}: expected one of {VARIANTS}")
    config = qa1_cpu.get_config()
    config.model.canon_kernel = 0  # these arms ran before qa1_cpu had Canon layers
    config.eval.every = 0
    if variant in ("rmt_r", "rmt_r_shared"):
        config.model.memory = "rmt_r"
        config.model.retrieval_dropout = 0.1
        config.model.retrieval_variant = "official" if variant == "rmt_r" else "shared_norm"
    elif variant == "armt":
        config.model.memory = "armt"
        config.model.d_mem = config.model.d_model // 4
    elif variant == "full":
        config.model.memory = "none"
        config.model.mem_tokens = 0
        config.model.max_positions = max(config.curriculum.segments) * config.model.segment_len
        config.eval.batch_size = 8  # attention weights of [b, heads, 4096, 4096]
        # the gradient over 8 slices of 4 rows: the same step in the memory of 4 rows (the
        # arm of the warm comparison, at batch 32 in one piece, was killed for memory at
        # 1,024 tokens)
        config.train.microbatches = 8
    if warm:
        config.model.init_from = BACKBONE
        config.curriculum.segments = (2, 4, 8)
        config.curriculum.story_questions = ()
        config.curriculum.stage_steps = 1000
        config.optim.stage_lr_scales = ()  # the rate of the committed warm runs throughout
    return config
