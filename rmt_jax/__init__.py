"""Recurrent Memory Transformer (RMT), RMT with self-retrieval (RMT-R) and the Associative
Recurrent Memory Transformer (ARMT) in Flax NNX."""

from rmt_jax.core.answer import (
    answer_logits,
    generate_answer,
    generate_in_context,
    greedy_answer,
    in_context_layout,
    loss_fn,
)
from rmt_jax.core.config import PRESETS, ModelConfig, get_config
from rmt_jax.core.model import RMT, count_params
from rmt_jax.core.recurrence import (
    MemoryState,
    initial_state,
    loop_segments,
    scan_segments,
    segment_step,
    split_segments,
)
from rmt_jax.core.streaming import stream_in_context, stream_infer

__all__ = [
    "PRESETS", "RMT", "MemoryState", "ModelConfig", "answer_logits", "count_params",
    "generate_answer", "generate_in_context", "get_config", "greedy_answer", "in_context_layout",
    "initial_state", "loop_segments", "loss_fn", "scan_segments", "segment_step",
    "split_segments", "stream_in_context", "stream_infer",
]
