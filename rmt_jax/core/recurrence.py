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
`scan_segments` equal to.

Truncated BPTT (`bptt_segments=k`): only the last k segment positions back-propagate. The
segments before them run forward only, with the parameters held constant, so the backward
pass neither keeps their activations nor spends time on them, and the state they leave
enters the k-th segment from the end as a constant. k counts each sample's real segments:
before the cut, a sample's segments with real tokens are moved after its empty ones, in
order (an empty segment changes nothing; the in-context layout already pads in front, the
separate answer segment's contexts are padded at the end). Dropout keys stay with the
positions; attention maps come back in the input's order. A sample whose segments before the
cut are all empty enters with its starting memory itself, so the learned initial memory
keeps its gradient there.
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


def _constant(tree):
    """`tree` with the gradient of every floating-point leaf stopped."""
    return jax.tree.map(lambda x: jax.lax.stop_gradient(x)
                        if jnp.issubdtype(jnp.result_type(x), jnp.inexact) else x, tree)


def bptt_cut(segments: int, bptt_segments: int | None) -> int:
    """How many leading segments of `segments` run forward only under truncation to k."""
    if bptt_segments is None or segments <= bptt_segments:
        return 0
    return segments - bptt_segments


def real_segments_last(xs: SegmentInput) -> tuple[SegmentInput, jax.Array]:
    """Each sample's segments with real tokens moved after its empty ones, in order ->
    (the moved segments, order [S, B]: the input position of each)."""
    order = jnp.argsort(xs.lengths > 0, axis=0, stable=True)
    return xs._replace(tokens=jnp.take_along_axis(xs.tokens, order[..., None], axis=0),
                       lengths=jnp.take_along_axis(xs.lengths, order, axis=0)), order


def _input_order(maps, order):
    """Attention maps [S, B, ...] of moved segments back in the input's order."""
    if maps is None or order is None:
        return maps
    back = jnp.argsort(order, axis=0)
    return jax.tree.map(
        lambda a: jnp.take_along_axis(a, back.reshape(back.shape + (1,) * (a.ndim - 2)), axis=0),
        maps)


def resume_after_cut(start: MemoryState, after: MemoryState, lengths: jax.Array) -> MemoryState:
    """The state entering the first back-propagated segment: `after` (the forward-only
    segments' state) as a constant, but the starting memory itself, gradient and all, for a
    sample whose segments so far ([S_cut, B] `lengths`) were all empty."""
    ran = (lengths > 0).any(axis=0)  # [B]
    memory = jnp.where(ran[:, None, None], jax.lax.stop_gradient(after.memory), start.memory)
    return _constant(after)._replace(memory=memory)


def segment_step(model: RMT, state: MemoryState, seg: SegmentInput,
                 return_attention: bool = False):
    """One segment of the recurrence -> (next MemoryState, attention maps or None)."""
    if model.config.memory == "none":
        return state._replace(step=state.step + 1), None
    k_read = k_seg = None
    if seg.key is not None:
        k_read, k_seg = jax.random.split(seg.key)
    nonempty = seg.lengths > 0  # [B]
    if state.assoc is not None:
        # ARMT carries only its associations; every segment writes the learned memory
        assoc = state.assoc
        write = model.initial_memory(seg.tokens.shape[0])
        _, maps, new_assoc = model.segment(write[:, :0], write, seg.tokens, seg.lengths, k_seg,
                                           return_attention, assoc)
        new_assoc = Associations(*(jnp.where(nonempty.reshape(-1, *(1,) * (new.ndim - 1)),
                                             new, old)
                                   for new, old in zip(new_assoc, assoc, strict=True)))
        return state._replace(step=state.step + 1, assoc=new_assoc), maps
    m = state.memory
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
    xs, cut, order = SegmentInput(tokens, lengths, keys), bptt_cut(segments, k), None
    if cut:
        xs, order = real_segments_last(xs)
    return state, xs, cut, order


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
    start, xs, cut, order = _prepare(model, context, context_mask, state, key, bptt_segments,
                                     return_attention)
    params, step = _step_fn(model, return_attention)

    def run(params, state, xs):
        return jax.lax.scan(lambda carry, seg: step(params, carry, seg), state, xs,
                            unroll=model.config.scan_unroll)

    if not cut:
        return run(params, start, xs)
    head = jax.tree.map(lambda a: a[:cut], xs)
    tail = jax.tree.map(lambda a: a[cut:], xs)
    after, head_maps = run(_constant(params), _constant(start), head)  # forward only
    state, tail_maps = run(params, resume_after_cut(start, after, head.lengths), tail)
    maps = (jax.tree.map(lambda a, b: jnp.concatenate([a, b]), head_maps, tail_maps)
            if return_attention else None)
    return state, _input_order(maps, order)


def loop_segments(model: RMT, context, context_mask=None, *, state: MemoryState | None = None,
                  key: jax.Array | None = None, bptt_segments="config",
                  return_attention: bool = False):
    """The Python-loop reference of `scan_segments` (same arguments, same results)."""
    start, xs, cut, order = _prepare(model, context, context_mask, state, key, bptt_segments,
                                     return_attention)
    state, maps = start, []
    for t in range(xs.tokens.shape[0]):
        if cut and t == cut:  # the gradient stops here (the parameters stayed live before)
            state = resume_after_cut(start, state, xs.lengths[:cut])
        state, m = segment_step(model, state, jax.tree.map(lambda a, t=t: a[t], xs),
                                return_attention)
        maps.append(m)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *maps) if return_attention else None
    return state, _input_order(stacked, order)
