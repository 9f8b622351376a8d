"""The answer: the training loss and greedy decoding, in either `config.answer_mode`.

Batch contract of `loss_fn` (B = batch, T context tokens, Qq question tokens, A answer slots):

  context          int32 [B, T]  context tokens (padded to whole segments inside)
  context_mask     bool  [B, T]  optional, True on real context tokens (see rmt_jax.core.recurrence)
  query            int32 [B, Q]  question tokens then answer tokens (then padding)
  loss_mask        [B, Q]        1 on the answer tokens to predict, 0 elsewhere. Token q[t] is
                                 predicted from position t-1, so loss_mask[:, 0] is ignored.
  question         int32 [B, Qq] question tokens, then padding ('in_context' only)
  question_length  int32 [B]     real question tokens ('in_context' only)
  answer           int32 [B, A]  answer tokens from slot 0 (eos included), then padding

'separate': after the context, an answer segment `[read memory; query]` (read = m for RMT,
[m; r] for RMT-R): every fact must cross the memory. Its LM head is the only one computed.

'in_context' (the official BABILong fine-tuning): each row's sequence is
`real context; question; A answer slots`, aligned so that it ENDS at the end of its last
segment (`in_context_layout`: padding goes in front, and a padded segment is treated as
the mask contract of rmt_jax.core.recurrence says). The question thus shares the last segment
with the last context tokens, and the answer always sits in the last A positions of that
segment, wherever the segment boundaries fall: decoding fills the same slots that training
teaches, so training and greedy decoding see one segmentation. Every segment but the last
is scanned as context; the last is run once (no memory is written after it) and its LM head
is applied at the A positions that predict the answer slots only. Slots after a short
answer hold padding, which causal attention hides from the answer positions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rmt_jax.core.model import RMT
from rmt_jax.core.recurrence import MemoryState, initial_state, scan_segments, split_segments


def _split(key):
    return (None, None) if key is None else tuple(jax.random.split(key))


def answer_logits(model: RMT, state: MemoryState, query: jax.Array, key=None) -> jax.Array:
    """Logits [B, Q, vocab] (float32) of the answer segment `[read memory; query]`."""
    k_read, k_ans = _split(key)
    read = model.read_memory(state.memory, state.buffer, state.buffer_valid, k_read)
    return model.logits(model.answer_hidden(read, query, k_ans, state.assoc))


def in_context_layout(context, context_mask, question, question_length, answer,
                      segment_len: int, xp=jnp):
    """Each row as `real context; question; answer slots`, ending at its last segment's end.

    context [B, T] (+ context_mask, None = all real), question [B, Qq] with question_length
    [B] real tokens, answer [B, A] slot contents (zeros when decoding) -> (tokens, mask), both
    [B, S*L] with S = ceil((T + Qq + A) / L): the same S for every row, padding in front.
    xp: jax.numpy (traced, for training) or numpy (on the host, for streaming).
    """
    batch, total = context.shape
    slots, q_width = answer.shape[1], question.shape[1]
    if slots >= segment_len:
        raise ValueError(f"{slots} answer slots do not fit a segment of {segment_len} tokens "
                         "with the question token before them: lower max_answer_len or raise "
                         "segment_len")
    mask = (xp.ones(context.shape, bool) if context_mask is None
            else xp.asarray(context_mask).astype(bool))
    if xp is np:
        order = np.argsort(~mask, axis=1, kind="stable")
    else:
        order = jnp.argsort(~mask, axis=1, stable=True)
    ctx = xp.take_along_axis(xp.asarray(context), order, axis=1)  # real tokens first
    width = -(-(total + q_width + slots) // segment_len) * segment_len
    c = mask.sum(1).astype(xp.int32)[:, None]  # [B, 1] real context tokens
    q = xp.asarray(question_length).astype(xp.int32)[:, None]
    j = xp.arange(width)[None, :] - (width - (c + q + slots))  # index into the row's sequence
    ctx_tok = xp.take_along_axis(ctx, xp.clip(j, 0, total - 1), axis=1)
    q_tok = xp.take_along_axis(xp.asarray(question), xp.clip(j - c, 0, q_width - 1), axis=1)
    a_tok = xp.take_along_axis(xp.asarray(answer), xp.clip(j - c - q, 0, slots - 1), axis=1)
    tokens = xp.where(j < c, ctx_tok, xp.where(j < c + q, q_tok, a_tok))
    real = j >= 0
    return xp.where(real, tokens, 0).astype(xp.int32), real


def window_len(config, width: int) -> int:
    """memory='none': how many of a layout's last `width` tokens the backbone reads at once,
    whole segments within `max_positions`."""
    return min(width, config.max_positions // config.segment_len * config.segment_len)


def _last_segment(model: RMT, tokens, mask, key=None):
    """Scans all segments of an `in_context_layout` but the last -> (state, last segment
    [B, L] with its real tokens first, their count [B]). Without memory there is nothing to
    scan: the 'last segment' is the window of the last `window_len` tokens."""
    seg_len = model.config.segment_len
    if model.config.memory == "none":
        seg_len = window_len(model.config, tokens.shape[1])
        state = initial_state(model, tokens.shape[0])
    elif tokens.shape[1] > seg_len:
        state, _ = scan_segments(model, tokens[:, :-seg_len], mask[:, :-seg_len], key=key)
    else:
        state = initial_state(model, tokens.shape[0], capacity=1)
    last, lengths = split_segments(tokens[:, -seg_len:], mask[:, -seg_len:], seg_len)
    return state, last[0], lengths[0]


def _in_context_loss(model: RMT, batch: dict, key):
    k_ctx, k_read, k_ans = (None, None, None) if key is None else tuple(jax.random.split(key, 3))
    answer = jnp.asarray(batch["answer"], jnp.int32)
    slots = answer.shape[1]
    tokens, mask = in_context_layout(batch["context"], batch.get("context_mask"),
                                     batch["question"], batch["question_length"], answer,
                                     model.config.segment_len)
    state, last, lengths = _last_segment(model, tokens, mask, k_ctx)
    read = model.read_memory(state.memory, state.buffer, state.buffer_valid, k_read)
    hidden = model.answer_hidden(read, last, k_ans, state.assoc)  # [B, L, d]
    # the position before each slot predicts it: [B, A]
    index = (lengths - slots - 1)[:, None] + jnp.arange(slots)[None, :]
    hidden = jnp.take_along_axis(hidden, index[..., None], axis=1)  # [B, A, d]
    answer_len = jnp.asarray(batch["loss_mask"], jnp.float32).sum(1)  # [B]
    weights = (jnp.arange(slots)[None, :] < answer_len[:, None]).astype(jnp.float32)
    return hidden, answer, weights


def loss_fn(model: RMT, batch: dict, key: jax.Array | None = None):
    """Cross-entropy on the answer tokens -> (loss, {'accuracy', 'answer_tokens'}).

    key: dropout key; None runs deterministically. Use with `nnx.value_and_grad(...,
    has_aux=True)`. The mode is `model.config.answer_mode`. 'separate': when the batch also
    holds `answer` [B, A], the answer tokens are known to sit in one run of at most A
    positions: the LM head (the costliest matmul of a small model's answer segment) is then
    applied at those A positions only, not all Q. 'in_context' always does so.
    """
    if model.config.answer_mode == "in_context":
        hidden, targets, weights = _in_context_loss(model, batch, key)
        return _cross_entropy(model, hidden, targets, weights)
    k_ctx, k_read, k_ans = (None, None, None) if key is None else tuple(jax.random.split(key, 3))
    state, _ = scan_segments(model, batch["context"], batch.get("context_mask"), key=k_ctx)
    query = jnp.asarray(batch["query"], jnp.int32)
    read = model.read_memory(state.memory, state.buffer, state.buffer_valid, k_read)
    hidden = model.answer_hidden(read, query, k_ans, state.assoc)[:, :-1]  # t predicts q[t+1]
    targets = query[:, 1:]
    weights = jnp.asarray(batch["loss_mask"], jnp.float32)[:, 1:]
    if "answer" in batch and batch["answer"].shape[1] < targets.shape[1]:
        window = batch["answer"].shape[1]
        first = jnp.argmax(weights > 0, axis=1)  # [B] first answer position
        first = jnp.minimum(first, targets.shape[1] - window)
        index = first[:, None] + jnp.arange(window)  # [B, A]
        hidden = jnp.take_along_axis(hidden, index[..., None], axis=1)
        targets = jnp.take_along_axis(targets, index, axis=1)
        weights = jnp.take_along_axis(weights, index, axis=1)
    return _cross_entropy(model, hidden, targets, weights)


def _cross_entropy(model: RMT, hidden, targets, weights):
    logits = model.logits(hidden)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    count = weights.sum()
    loss = (ce * weights).sum() / jnp.maximum(count, 1.0)
    correct = (logits.argmax(-1) == targets).astype(jnp.float32)
    accuracy = (correct * weights).sum() / jnp.maximum(count, 1.0)
    return loss, {"accuracy": accuracy, "answer_tokens": count}


def _cached_greedy(model: RMT, read: jax.Array, tokens: jax.Array, first: jax.Array,
                   max_new_tokens: int, stop_id: int | None, assoc) -> jax.Array:
    """tokens [B, L] with max_new_tokens empty slots from first [B] on -> the slots filled
    greedily, each from the position before it: one pass over the window [read; tokens]
    keeps every layer's keys and values, then each new token runs alone at its position
    (a KV cache: the window is not run again per token). With `stop_id`, decoding stops
    once every row has produced it (the slots after a row's stop token are then left as they
    were; the text up to it is the same)."""
    r = read.shape[1]
    rows = jnp.arange(tokens.shape[0])
    hidden, caches = model.answer_prefill(read, tokens, assoc)
    h = hidden[rows, first - 1]  # [B, d]: predicts slot 0

    def body(carry):
        i, tokens, caches, h, done = carry
        nxt = model.logits(h).argmax(-1).astype(jnp.int32)  # [B]
        tokens = tokens.at[rows, first + i].set(jnp.where(done, tokens[rows, first + i], nxt))
        done = done | (nxt == stop_id) if stop_id is not None else done
        h, caches = model.answer_decode(nxt, r + first + i, caches, assoc)
        return i + 1, tokens, caches, h, done

    def cond(carry):
        i, done = carry[0], carry[-1]
        return (i < max_new_tokens) & ~done.all()

    done = jnp.zeros(tokens.shape[:1], bool)
    return jax.lax.while_loop(cond, body, (jnp.int32(0), tokens, caches, h, done))[1]


def generate_answer(model: RMT, state: MemoryState, question: jax.Array, *,
                    max_new_tokens: int, question_lengths: jax.Array | None = None,
                    stop_id: int | None = None) -> jax.Array:
    """Greedy answer tokens [B, max_new_tokens] after `question` [B, Qq], given the final state.

    question_lengths [B] (default Qq): real question tokens per row (right padding). The
    answer segment runs once; each new token then runs alone at its position (KV cache).
    stop_id: the end-of-answer token: generation stops once every row has produced it (the
    slots after a row's stop token are then left 0; the text up to it is the same).
    """
    question = jnp.asarray(question, jnp.int32)
    batch, q_len = question.shape
    if q_len == 0:
        raise ValueError("empty question: pass at least one question token")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    lengths = (jnp.full((batch,), q_len, jnp.int32) if question_lengths is None
               else jnp.asarray(question_lengths, jnp.int32))
    read = model.read_memory(state.memory, state.buffer, state.buffer_valid)
    tokens = jnp.pad(question, ((0, 0), (0, max_new_tokens)))
    tokens = _cached_greedy(model, read, tokens, lengths, max_new_tokens, stop_id, state.assoc)
    return jnp.take_along_axis(tokens, lengths[:, None] + jnp.arange(max_new_tokens), axis=1)


def generate_in_context(model: RMT, state: MemoryState, last: jax.Array, lengths: jax.Array, *,
                        max_new_tokens: int, stop_id: int | None = None) -> jax.Array:
    """Greedy answer tokens [B, max_new_tokens] filling the answer slots of the last segment.

    last [B, L]: the last segment of an `in_context_layout` made with max_new_tokens empty
    slots, real tokens first (lengths [B] of them); state: the memory after the segments
    before it. The last segment runs once; each new token then runs alone at its position
    (KV cache). stop_id: as in `generate_answer`.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    read = model.read_memory(state.memory, state.buffer, state.buffer_valid)
    first = jnp.asarray(lengths, jnp.int32) - max_new_tokens  # [B] first slot
    tokens = _cached_greedy(model, read, jnp.asarray(last, jnp.int32), first, max_new_tokens,
                            stop_id, state.assoc)
    return jnp.take_along_axis(tokens, first[:, None] + jnp.arange(max_new_tokens), axis=1)


def greedy_answer(model: RMT, context, context_mask, question, question_length, *,
                  max_new_tokens: int, stop_id: int | None = None) -> jax.Array:
    """Greedy answer tokens [B, max_new_tokens] for a batch, in the model's answer_mode
    (the context scanned in one `scan_segments`); stop_id as in `generate_answer`."""
    if model.config.answer_mode == "in_context":
        question = jnp.asarray(question, jnp.int32)
        slots = jnp.zeros((question.shape[0], max_new_tokens), jnp.int32)
        tokens, mask = in_context_layout(context, context_mask, question, question_length,
                                         slots, model.config.segment_len)
        state, last, lengths = _last_segment(model, tokens, mask)
        return generate_in_context(model, state, last, lengths, max_new_tokens=max_new_tokens,
                                   stop_id=stop_id)
    state, _ = scan_segments(model, context, context_mask)
    return generate_answer(model, state, question, max_new_tokens=max_new_tokens,
                           question_lengths=question_length, stop_id=stop_id)
