"""The answer segment: the training loss and greedy decoding after the last context segment.

Batch contract of `loss_fn` (B = batch, T context tokens, Q query tokens):

  context       int32 [B, T]  context tokens (padded to whole segments inside)
  context_mask  bool  [B, T]  optional, True on real context tokens (see rmt_jax.recurrence)
  query         int32 [B, Q]  question tokens then answer tokens (then padding)
  loss_mask     [B, Q]        1 on the answer tokens to predict, 0 elsewhere. Token q[t] is
                              predicted from position t-1, so loss_mask[:, 0] is ignored.

The answer segment is `[read memory; query]`: read = m (RMT) or [m; r] (RMT-R, the
retrieval reading every stored memory). Its LM head is the only one computed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from rmt_jax.model import RMT
from rmt_jax.recurrence import MemoryState, scan_segments


def _split(key):
    return (None, None) if key is None else tuple(jax.random.split(key))


def answer_logits(model: RMT, state: MemoryState, query: jax.Array, key=None) -> jax.Array:
    """Logits [B, Q, vocab] (float32) of the answer segment `[read memory; query]`."""
    k_read, k_ans = _split(key)
    read = model.read_memory(state.memory, state.buffer, state.buffer_valid, k_read)
    return model.logits(model.answer_hidden(read, query, k_ans))


def loss_fn(model: RMT, batch: dict, key: jax.Array | None = None):
    """Cross-entropy on the answer tokens -> (loss, {'accuracy', 'answer_tokens'}).

    key: dropout key; None runs deterministically. Use with `nnx.value_and_grad(...,
    has_aux=True)`. When the batch also holds `answer` [B, A], the answer tokens are known
    to sit in one run of at most A positions: the LM head (the costliest matmul of a small
    model's answer segment) is then applied at those A positions only, not all Q.
    """
    k_ctx, k_read, k_ans = (None, None, None) if key is None else tuple(jax.random.split(key, 3))
    state, _ = scan_segments(model, batch["context"], batch.get("context_mask"), key=k_ctx)
    query = jnp.asarray(batch["query"], jnp.int32)
    read = model.read_memory(state.memory, state.buffer, state.buffer_valid, k_read)
    hidden = model.answer_hidden(read, query, k_ans)[:, :-1]  # position t predicts q[t+1]
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
    logits = model.logits(hidden)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    count = weights.sum()
    loss = (ce * weights).sum() / jnp.maximum(count, 1.0)
    correct = (logits.argmax(-1) == targets).astype(jnp.float32)
    accuracy = (correct * weights).sum() / jnp.maximum(count, 1.0)
    return loss, {"accuracy": accuracy, "answer_tokens": count}


def generate_answer(model: RMT, state: MemoryState, question: jax.Array, *,
                    max_new_tokens: int, question_lengths: jax.Array | None = None) -> jax.Array:
    """Greedy answer tokens [B, max_new_tokens] after `question` [B, Qq], given the final state.

    question_lengths [B] (default Qq): real question tokens per row (right padding). Each
    step re-runs the short answer segment (no KV cache: answers are a few tokens).
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
    rows = jnp.arange(batch)

    def body(i, tokens):
        h = model.answer_hidden(read, tokens)  # [B, Qq + new, d]
        last = h[rows, lengths - 1 + i]  # [B, d]
        return tokens.at[rows, lengths + i].set(model.logits(last).argmax(-1).astype(jnp.int32))

    tokens = jax.lax.fori_loop(0, max_new_tokens, body, tokens)
    return jnp.take_along_axis(tokens, lengths[:, None] + jnp.arange(max_new_tokens), axis=1)
