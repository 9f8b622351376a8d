"""The recurrence over segments: one `segment_step`, scanned (`scan_segments`) or looped.

Array contract (B = batch, S = segments, L = segment_len, n = mem_tokens, d = d_model):

  context       int32 [B, T]   token ids; T > 0 need not be a multiple of L (it is padded)
  context_mask  bool  [B, T]   True on real tokens (None = all real). Any pattern is allowed:
                               within every segment the real tokens are moved to the front,
                               so a mask is equivalent to dropping the masked tokens
                               segment by segment. A segment with no real token is *empty*:
                               it leaves the memory (and the RMT-R buffer) unchanged.
  MemoryState   the carry: memory [B, n, d]; for RMT-R buffer [B, T_cap, 2, n, d]: keys and
                values of past output memories (computed once, when written),
                buffer_valid [B, T_cap], and step (next buffer row); for ARMT assoc, the
                per-layer associative matrices and normalisers (`Associations`, float32),
                while memory stays the learned write embeddings. With memory='none' a
                segment changes nothing (only the last window is read: rmt_jax.core.answer).

`loop_segments` runs the same `segment_step` in a Python loop: the reference the tests hold
`scan_segments` equal to. Truncated BPTT (`bptt_segments=k`) stops the gradient of the memory
entering each sample's last k non-empty segments, so nothing older gets a gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rmt_jax.core.model import RMT, Associations


class MemoryState(NamedTuple):
    memory: jax.Array              # [B, n, d] compute dtype
    buffer: jax.Array | None       # [B, T_cap, 2, n, d] keys, values of output memories (RMT-R)
    buffer_valid: jax.Array | None  # [B, T_cap] bool (RMT-R only)
    step: jax.Array                # [] int32 segment slots consumed = next buffer row
    assoc: Associations | None = None  # ARMT: [B, layers, d_key, d] and [B, layers, d_key]


class SegmentInput(NamedTuple):
    tokens: jax.Array        # [B, L] int32, real tokens first
    lengths: jax.Array       # [B] int32 real tokens in this segment
    stop_gradient: jax.Array  # [B] bool: cut the gradient of the incoming memory (truncation)
    key: jax.Array | None    # dropout key for this segment, None = deterministic


def initial_state(model: RMT, batch: int, capacity: int = 0) -> MemoryState:
    """The learned memory for `batch` samples; an empty RMT-R buffer of `capacity` rows;
    ARMT's empty associations."""
    cfg = model.config
    memory = model.initial_memory(batch)
    buffer = valid = None
    if cfg.retrieval:
        buffer = jnp.zeros((batch, capacity, 2, cfg.mem_tokens, cfg.d_model), memory.dtype)
        valid = jnp.zeros((batch, capacity), bool)
    return MemoryState(memory, buffer, valid, jnp.zeros((), jnp.int32),
                       model.initial_associations(batch))


def split_segments(context, context_mask, segment_len: int):
    """[B, T] tokens and mask -> (tokens [S, B, L], lengths [S, B]), real tokens moved first."""
    context = jnp.asarray(context)
    if context.ndim != 2:
        raise ValueError(f"context must be [batch, tokens], got shape {context.shape}")
    batch, total = context.shape
    if batch == 0 or total == 0:
        raise ValueError(f"empty context (shape {context.shape}): pass at least one token per "
                         "batch row; mark padding with context_mask instead")
    mask = jnp.ones(context.shape, bool) if context_mask is None else jnp.asarray(context_mask)
    if mask.shape != context.shape:
        raise ValueError(f"context_mask shape {mask.shape} != context shape {context.shape}")
    segments = -(-total // segment_len)
    pad = segments * segment_len - total
    tokens = jnp.pad(context.astype(jnp.int32), ((0, 0), (0, pad)))
    mask = jnp.pad(mask.astype(bool), ((0, 0), (0, pad)))
    tokens = tokens.reshape(batch, segments, segment_len)
    mask = mask.reshape(batch, segments, segment_len)
    order = jnp.argsort(~mask, axis=-1, stable=True)  # real tokens first, order kept
    tokens = jnp.take_along_axis(tokens, order, axis=-1)
    lengths = mask.sum(-1).astype(jnp.int32)
    return tokens.transpose(1, 0, 2), lengths.T


def bptt_stop_mask(lengths: jax.Array, bptt_segments: int | None) -> jax.Array:
    """[S, B] bool: stop the incoming memory's gradient at each sample's k-th-from-last segment.

    The cut is placed where exactly k non-empty segments remain (counting this one) and some
    earlier non-empty segment exists, so the learned initial memory keeps its gradient when
    k covers every segment.
    """
    if bptt_segments is None:
        return jnp.zeros(lengths.shape, bool)
    nonempty = (lengths > 0).astype(jnp.int32)
    remaining = jnp.cumsum(nonempty[::-1], axis=0)[::-1]  # non-empty segments in [t, S)
    before = jnp.cumsum(nonempty, axis=0) - nonempty  # non-empty segments in [0, t)
    return (remaining >= bptt_segments) & (before > 0)


def segment_step(model: RMT, state: MemoryState, seg: SegmentInput,
                 return_attention: bool = False):
    """One segment of the recurrence -> (next MemoryState, attention maps or None)."""
    if model.config.memory == "none":
        return state._replace(step=state.step + 1), None
    stop = seg.stop_gradient

    def cut(x):  # [B, ...]: the incoming state's gradient stops where `stop`
        return jnp.where(stop.reshape(-1, *(1,) * (x.ndim - 1)), jax.lax.stop_gradient(x), x)

    k_read = k_seg = None
    if seg.key is not None:
        k_read, k_seg = jax.random.split(seg.key)
    nonempty = seg.lengths > 0  # [B]
    if state.assoc is not None:
        # ARMT carries only its associations; every segment writes the learned memory
        assoc = Associations(*map(cut, state.assoc))
        write = model.initial_memory(seg.tokens.shape[0])
        _, maps, new_assoc = model.segment(write[:, :0], write, seg.tokens, seg.lengths, k_seg,
                                           return_attention, assoc)
        new_assoc = Associations(*(jnp.where(nonempty.reshape(-1, *(1,) * (new.ndim - 1)),
                                             new, old)
                                   for new, old in zip(new_assoc, assoc, strict=True)))
        return state._replace(step=state.step + 1, assoc=new_assoc), maps
    m = cut(state.memory)
    read = model.read_memory(m, state.buffer, state.buffer_valid, k_read)
    new_m, maps, _ = model.segment(read, m, seg.tokens, seg.lengths, k_seg, return_attention)
    new_m = jnp.where(nonempty[:, None, None], new_m.astype(m.dtype), m)
    buffer, valid = state.buffer, state.buffer_valid
    if buffer is not None:
        kv = model.retrieval.keys_values(new_m).astype(buffer.dtype)  # [B, 2, n, d]
        buffer = jax.lax.dynamic_update_slice(buffer, kv[:, None], (0, state.step, 0, 0, 0))
        valid = jax.lax.dynamic_update_slice(valid, nonempty[:, None], (0, state.step))
    return MemoryState(new_m, buffer, valid, state.step + 1), maps


def _prepare(model, context, context_mask, state, key, bptt_segments, return_attention):
    cfg = model.config
    if return_attention and not cfg.attention_map_layers:
        raise ValueError("return_attention=True but config.attention_map_layers is empty: "
                         "name the layers, e.g. attention_map_layers=(0,)")
    tokens, lengths = split_segments(context, context_mask, cfg.segment_len)
    segments, batch = lengths.shape
    if state is None:
        state = initial_state(model, batch, capacity=segments)
    elif state.buffer is not None and state.buffer.shape[1] < segments:
        raise ValueError(f"retrieval buffer holds {state.buffer.shape[1]} rows but {segments} "
                         "segments follow: grow the buffer (see streaming.grow_buffer)")
    k = cfg.bptt_segments if bptt_segments == "config" else bptt_segments
    keys = None if key is None else jax.random.split(key, segments)
    return state, SegmentInput(tokens, lengths, bptt_stop_mask(lengths, k), keys)


def _step_fn(model: RMT, return_attention: bool):
    """segment_step as a function of (params, state, seg), rematerialised per config."""
    graphdef, params = nnx.split(model)

    def step(params, state, seg):
        return segment_step(nnx.merge(graphdef, params), state, seg, return_attention)

    if model.config.remat_policy != "none":
        step = jax.checkpoint(step, policy=model.config.checkpoint_policy)
    return params, step


def scan_segments(model: RMT, context, context_mask=None, *, state: MemoryState | None = None,
                  key: jax.Array | None = None, bptt_segments="config",
                  return_attention: bool = False):
    """Runs every segment with `jax.lax.scan` -> (final MemoryState, maps or None).

    key: dropout key (None = deterministic). bptt_segments: k, None for full BPTT, or
    'config' to use `config.bptt_segments`. The loop runs `config.scan_unroll` segments per
    iteration (fewer loop trips and larger fusions on a GPU; the same results).
    maps: {'layer_i': [S, B, h, T, T]} for the configured layers when `return_attention`,
    else None.
    """
    state, xs = _prepare(model, context, context_mask, state, key, bptt_segments,
                         return_attention)
    params, step = _step_fn(model, return_attention)
    return jax.lax.scan(lambda carry, seg: step(params, carry, seg), state, xs,
                        unroll=model.config.scan_unroll)


def loop_segments(model: RMT, context, context_mask=None, *, state: MemoryState | None = None,
                  key: jax.Array | None = None, bptt_segments="config",
                  return_attention: bool = False):
    """The Python-loop reference of `scan_segments` (same arguments, same results)."""
    state, xs = _prepare(model, context, context_mask, state, key, bptt_segments,
                         return_attention)
    maps = []
    for t in range(xs.tokens.shape[0]):
        state, m = segment_step(model, state, jax.tree.map(lambda a, t=t: a[t], xs),
                                return_attention)
        maps.append(m)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *maps) if return_attention else None
    return state, stacked
