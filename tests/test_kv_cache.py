"""Greedy decoding with a KV cache: the answer window runs once and every new token then runs
alone at its position. The tokens and hidden states are those of running the whole window
again for every token (the way decoding worked before the cache), for every memory and
every kind of position."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rmt_jax import RMT, get_config, scan_segments
from rmt_jax.core.answer import (
    _last_segment,
    generate_answer,
    generate_in_context,
    greedy_answer,
    in_context_layout,
)
from tests.test_rmt_recurrence import VARIANTS, jit, random_tokens, with_associations

# numbers and behaviour, not speed: XLA's optimisations off (conftest.fast_compiles)
pytestmark = pytest.mark.usefixtures("fast_compiles")

SEG, SLOTS = 8, 3
CASES = [("learned", m) for m in ("rmt", "rmt_r", "armt", "none")] + [
    ("rope", "rmt"), ("alibi", "rmt"), ("rope", "armt"), ("alibi", "none")]


def model_for(positions: str, memory: str, answer_mode: str) -> RMT:
    fields = ({"memory": "none", "mem_tokens": 0, "max_positions": 4 * SEG} if memory == "none"
              else VARIANTS[memory])
    cfg = get_config("test", positions=positions, answer_mode=answer_mode, **fields)
    return with_associations(RMT(cfg, rngs=nnx.Rngs(0)))


def rerun_window(model: RMT, read, tokens, first, n: int, assoc):
    """The reference: every token from a full pass over the window with the tokens so far."""
    rows = jnp.arange(tokens.shape[0])
    for i in range(n):
        h = model.answer_hidden(read, tokens, assoc=assoc)
        nxt = model.logits(h[rows, first - 1 + i]).argmax(-1).astype(jnp.int32)
        tokens = tokens.at[rows, first + i].set(nxt)
    return jnp.take_along_axis(tokens, first[:, None] + jnp.arange(n), axis=1)


def in_context_inputs(model: RMT, width: int):
    context = random_tokens((2, width), seed=1)
    question = random_tokens((2, 4), seed=2)
    qlen = np.array([4, 2], np.int32)
    tokens, mask = in_context_layout(jnp.asarray(context), None, jnp.asarray(question),
                                     jnp.asarray(qlen), jnp.zeros((2, SLOTS), jnp.int32), SEG)
    return context, question, qlen, tokens, mask


@pytest.mark.parametrize(("positions", "memory"), CASES)
def test_cached_in_context_decoding_is_rerunning_the_window(positions, memory):
    model = model_for(positions, memory, "in_context")
    width = 3 * SEG if memory == "none" else 5 * SEG - 3
    context, question, qlen, tokens, mask = in_context_inputs(model, width)

    def both(m, tokens, mask):
        state, last, lengths = _last_segment(m, tokens, mask)  # memory 'none': the window
        read = m.read_memory(state.memory, state.buffer, state.buffer_valid)
        cached = generate_in_context(m, state, last, lengths, max_new_tokens=SLOTS)
        reference = rerun_window(m, read, last, lengths - SLOTS, SLOTS, state.assoc)
        return cached, reference

    cached, ref = jit(both, model)(tokens, mask)
    whole = jit(lambda m, *a: greedy_answer(m, *a, max_new_tokens=SLOTS), model)(
        context, None, question, qlen)
    np.testing.assert_array_equal(whole, cached)
    np.testing.assert_array_equal(cached, ref)
    assert len(np.unique(np.asarray(cached))) > 1  # not one token everywhere


@pytest.mark.parametrize(("positions", "memory"),
                         [("learned", "rmt"), ("learned", "rmt_r"), ("rope", "armt"),
                          ("alibi", "rmt")])
def test_cached_separate_decoding_is_rerunning_the_window(positions, memory):
    model = model_for(positions, memory, "separate")
    context = random_tokens((2, 3 * SEG), seed=3)
    question = random_tokens((2, 5), seed=4)
    qlen = np.array([5, 2], np.int32)

    def both(m, context, question, qlen):
        state, _ = scan_segments(m, context)
        read = m.read_memory(state.memory, state.buffer, state.buffer_valid)
        cached = generate_answer(m, state, question, max_new_tokens=SLOTS,
                                 question_lengths=qlen)
        padded = jnp.pad(question, ((0, 0), (0, SLOTS)))
        return cached, rerun_window(m, read, padded, qlen, SLOTS, state.assoc)

    cached, ref = jit(both, model)(context, question, qlen)
    np.testing.assert_array_equal(cached, ref)


@pytest.mark.parametrize("positions", ["learned", "rope", "alibi"])
def test_a_decoded_position_has_the_full_pass_hidden_state(positions):
    """answer_decode's hidden state at a position equals the full pass's there, with the
    positions after it holding anything (they are masked), for ARMT's per-layer reads too."""
    model = model_for(positions, "armt", "in_context")
    tokens = jnp.asarray(random_tokens((2, SEG), seed=5))
    state, _ = scan_segments(model, jnp.asarray(random_tokens((2, 2 * SEG), seed=6)))
    read = model.read_memory(state.memory, state.buffer, state.buffer_valid)
    pos = jnp.array([3, 6])  # in the segment; the window adds the read rows before it
    rows = jnp.arange(2)
    new = jnp.array([7, 9], jnp.int32)
    _, caches = model.answer_prefill(read, tokens.at[rows, pos].set(0).at[rows, pos + 1].set(5),
                                     state.assoc)
    h, caches = model.answer_decode(new, read.shape[1] + pos, caches, state.assoc)
    full = model.answer_hidden(read, tokens.at[rows, pos].set(new), assoc=state.assoc)
    np.testing.assert_allclose(h, full[rows, pos], rtol=1e-5, atol=1e-5)
    # the updated cache holds the new token's keys: the next position decodes as a full pass
    h2, _ = model.answer_decode(jnp.array([1, 2], jnp.int32), read.shape[1] + pos + 1, caches,
                                state.assoc)
    full2 = model.answer_hidden(
        read, tokens.at[rows, pos].set(new).at[rows, pos + 1].set(jnp.array([1, 2])),
        assoc=state.assoc)
    np.testing.assert_allclose(h2, full2[rows, pos + 1], rtol=1e-5, atol=1e-5)


def test_stop_token_leaves_a_finished_rows_later_slots_and_stops_early():
    model = model_for("learned", "rmt", "separate")
    state, _ = scan_segments(model, jnp.asarray(random_tokens((2, 2 * SEG), seed=7)))
    question = jnp.asarray(random_tokens((2, 4), seed=8))
    free = np.asarray(generate_answer(model, state, question, max_new_tokens=4))
    stop = int(free[0, 1])  # row 0 stops after its second token
    stopped = np.asarray(generate_answer(model, state, question, max_new_tokens=4,
                                         stop_id=stop))
    end = list(free[0]).index(stop)
    np.testing.assert_array_equal(stopped[0, :end + 1], free[0, :end + 1])
    assert (stopped[0, end + 1:] == 0).all()  # left as they were
    row1 = list(free[1])
    end1 = row1.index(stop) if stop in row1 else 3
    np.testing.assert_array_equal(stopped[1, :end1 + 1], free[1, :end1 + 1])
