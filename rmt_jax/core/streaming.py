"""Inference over inputs larger than device memory: the host streams chunks of segments.

`stream_infer` cuts host tokens (numpy) into chunks of `chunk_segments * segment_len` tokens,
and one jitted function scans each chunk and returns the carried `MemoryState` (its input
state is donated). Device memory stays flat for RMT; for RMT-R it grows only with the
retrieval buffer, which is preallocated when the total length is known (an array input) and
otherwise doubled as needed (so the chunk function recompiles O(log chunks) times); ARMT's
associations are constant in size. Without memory only the last window is read.

The last chunk is padded with masked tokens to the full chunk shape: padded segments are
empty and leave the memory unchanged, so the result equals one `scan_segments` over the
whole input.

In the 'in_context' answer mode the question shares the last segment with the last context
tokens: `stream_in_context` lays the rows out as `rmt_jax.core.answer.in_context_layout` does (on
the host), streams every segment but the last, and returns that last segment for
`rmt_jax.core.answer.generate_in_context`. The result equals `greedy_answer` over one scan.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rmt_jax.core.answer import in_context_layout, window_len
from rmt_jax.core.model import RMT
from rmt_jax.core.recurrence import MemoryState, initial_state, scan_segments, split_segments


def grow_buffer(state: MemoryState, capacity: int) -> MemoryState:
    """The same state with the RMT-R buffer padded to `capacity` rows (no-op for RMT)."""
    if state.buffer is None or state.buffer.shape[1] >= capacity:
        return state
    extra = capacity - state.buffer.shape[1]
    buffer = jnp.pad(state.buffer, ((0, 0), (0, extra), (0, 0), (0, 0), (0, 0)))
    valid = jnp.pad(state.buffer_valid, ((0, 0), (0, extra)))
    return state._replace(buffer=buffer, buffer_valid=valid)


def _as_rows(chunk) -> np.ndarray:
    chunk = np.asarray(chunk)
    if chunk.ndim == 1:
        chunk = chunk[None]
    if chunk.ndim != 2:
        raise ValueError(f"token chunks must be [tokens] or [batch, tokens], got {chunk.shape}")
    return chunk


def _host_chunks(pieces: Iterable, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Re-cuts arbitrary [B, t] pieces of real tokens into chunks of `size` tokens (the last
    may be shorter) -> (tokens, mask) pairs."""
    pending, held = [], 0
    for piece in pieces:
        piece = _as_rows(piece)
        pending.append(piece)
        held += piece.shape[1]
        while held >= size:
            joined = np.concatenate(pending, axis=1)
            yield joined[:, :size], np.ones((joined.shape[0], size), bool)
            pending, held = [joined[:, size:]], held - size
    if held:
        joined = np.concatenate(pending, axis=1)
        yield joined, np.ones(joined.shape, bool)


def _array_chunks(rows: np.ndarray, mask, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Slices [B, T] tokens (and mask) into chunks of `size` tokens without copying the rest."""
    mask = np.ones(rows.shape, bool) if mask is None else _as_rows(mask).astype(bool)
    for start in range(0, rows.shape[1], size):
        yield rows[:, start:start + size], mask[:, start:start + size]


@functools.lru_cache(maxsize=16)
def _chunk_fn(graphdef):
    """The jitted chunk scan of one model structure, compiled once per shape and reused
    across calls (an evaluation streams many samples through the same model)."""

    def run_chunk(params, state, chunk, mask):
        state, _ = scan_segments(nnx.merge(graphdef, params), chunk, mask, state=state,
                                 bptt_segments=None)
        return state

    return jax.jit(run_chunk, donate_argnums=(1,))


def stream_infer(model: RMT, tokens, *, mask=None, chunk_segments: int = 64,
                 state: MemoryState | None = None) -> MemoryState:
    """Scans `tokens` chunk by chunk -> final MemoryState (pass it to `generate_answer`).

    tokens: a numpy array [T] or [B, T], or an iterable of such pieces of any length.
    mask: with an array, True on its real tokens (None = all real), as in `scan_segments`:
      rows of different lengths stream together, padded at their ends.
    state: carry from an earlier call, to continue a stream (it is donated: do not reuse it).
    """
    cfg = model.config
    if chunk_segments < 1:
        raise ValueError(f"chunk_segments={chunk_segments} must be >= 1")
    chunk_tokens = chunk_segments * cfg.segment_len
    known_segments = None
    if isinstance(tokens, np.ndarray | jax.Array):
        rows = _as_rows(tokens)
        if rows.shape[1] == 0:
            raise ValueError("empty input: stream at least one token")
        if mask is not None and _as_rows(mask).shape != rows.shape:
            raise ValueError(f"mask shape {np.shape(mask)} != tokens shape {np.shape(tokens)}")
        known_segments = -(-rows.shape[1] // chunk_tokens) * chunk_segments
        chunks = _array_chunks(rows, mask, chunk_tokens)
    elif mask is not None:
        raise ValueError("mask is for an array of tokens; an iterable of pieces is all real "
                         "tokens (drop the padding from the pieces instead)")
    else:
        chunks = _host_chunks(tokens, chunk_tokens)

    graphdef, params = nnx.split(model)
    run_chunk = _chunk_fn(graphdef)
    # segment slots consumed, tracked on the host to avoid a device sync per chunk
    seen = 0 if state is None else int(state.step)
    for chunk, chunk_mask in chunks:
        if state is None:
            capacity = known_segments or chunk_segments
            state = initial_state(model, chunk.shape[0], capacity if cfg.retrieval else 0)
        if state.buffer is not None and state.buffer.shape[1] < seen + chunk_segments:
            state = grow_buffer(state, max(seen + chunk_segments, 2 * state.buffer.shape[1]))
        if chunk.shape[1] < chunk_tokens:
            pad = chunk_tokens - chunk.shape[1]
            chunk_mask = np.pad(chunk_mask, ((0, 0), (0, pad)))
            chunk = np.pad(chunk, ((0, 0), (0, pad)))
        state = run_chunk(params, state, chunk.astype(np.int32), chunk_mask)
        seen += chunk_segments
    if state is None:
        raise ValueError("empty input: stream at least one token")
    return state


def stream_in_context(model: RMT, context, question, question_length, *, answer_slots: int,
                      mask=None, chunk_segments: int = 64):
    """Streams a batch in the 'in_context' layout -> (state, last [B, L], lengths [B]).

    context [B, T] (numpy; mask as in `stream_infer`), question [B, Qq] with question_length
    [B] real tokens, answer_slots: the answer tokens to be generated (max_new_tokens). Only
    the last segment holds the question: every segment before it is streamed chunk by chunk.
    """
    rows = _as_rows(context)
    question = _as_rows(question)
    if question.shape[0] != rows.shape[0]:
        raise ValueError(f"question rows {question.shape[0]} != context rows {rows.shape[0]}")
    slots = np.zeros((rows.shape[0], answer_slots), np.int32)
    tokens, real = in_context_layout(rows, None if mask is None else _as_rows(mask), question,
                                     np.asarray(question_length), slots,
                                     model.config.segment_len, xp=np)
    seg_len = model.config.segment_len
    if model.config.memory == "none":  # nothing to carry: the backbone reads the last window
        seg_len = window_len(model.config, tokens.shape[1])
        state = initial_state(model, rows.shape[0])
    elif tokens.shape[1] > seg_len:
        state = stream_infer(model, tokens[:, :-seg_len], mask=real[:, :-seg_len],
                             chunk_segments=chunk_segments)
    else:
        state = initial_state(model, rows.shape[0], capacity=1)
    last, lengths = split_segments(tokens[:, -seg_len:], real[:, -seg_len:], seg_len)
    return state, last[0], lengths[0]
