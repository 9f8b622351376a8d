"""Recurrent Memory Transformer (RMT) and RMT with self-retrieval (RMT-R) in Flax NNX."""

from rmt_jax.answer import answer_logits, generate_answer, loss_fn
from rmt_jax.config import PRESETS, ModelConfig, get_config
from rmt_jax.model import RMT, count_params
from rmt_jax.recurrence import (
    MemoryState,
    initial_state,
    loop_segments,
    scan_segments,
    segment_step,
    split_segments,
)
from rmt_jax.streaming import stream_infer

__all__ = [
    "PRESETS", "RMT", "MemoryState", "ModelConfig", "answer_logits", "count_params",
    "generate_answer", "get_config", "initial_state", "loop_segments", "loss_fn",
    "scan_segments", "segment_step", "split_segments", "stream_infer",
]
