"""The 'in_context' answer mode: layout, loss on answer tokens only, greedy == teacher-forced
argmax, no leak of the answer into the context, scan == loop, streamed == one scan."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rmt_jax import (
    RMT,
    generate_in_context,
    get_config,
    greedy_answer,
    in_context_layout,
    loop_segments,
    loss_fn,
    stream_in_context,
)
from rmt_jax.core import answer
from rmt_jax.core.recurrence import initial_state
from tests.test_rmt_recurrence import VARIANTS, with_associations

SEG = 8  # segment_len of the 'test' preset
SLOTS = 3  # answer slots (max_answer_len)
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@functools.cache
def make_model(**overrides) -> RMT:
    return with_associations(RMT(get_config("test", answer_mode="in_context", **overrides),
                                 rngs=nnx.Rngs(0)))


def make_batch(seed=0):
    """3 rows: contexts of 29, 5 and 16 real tokens (end padding), questions of 4, 2, 1."""
    rng = np.random.RandomState(seed)
    width = 4 * SEG
    context = rng.randint(1, 64, (3, width)).astype(np.int32)
    lengths = np.array([29, 5, 16])
    mask = np.arange(width)[None] < lengths[:, None]
    context = np.where(mask, context, 0)
    q_len = np.array([4, 2, 1], np.int32)
    question = np.where(np.arange(5)[None] < q_len[:, None], rng.randint(1, 64, (3, 5)), 0)
    answer_len = np.array([3, 2, 1])
    ans = np.where(np.arange(SLOTS)[None] < answer_len[:, None],
                   rng.randint(1, 64, (3, SLOTS)), 0).astype(np.int32)
    loss_mask = np.zeros((3, 5 + SLOTS), np.float32)
    for i in range(3):
        loss_mask[i, q_len[i]:q_len[i] + answer_len[i]] = 1.0
    return {"context": context, "context_mask": mask, "question": question.astype(np.int32),
            "question_length": q_len, "answer": ans, "loss_mask": loss_mask,
            "query": np.zeros((3, 5 + SLOTS), np.int32)}


def jit(fn, model):
    graphdef, params = nnx.split(model)
    compiled = jax.jit(lambda p, *a: fn(nnx.merge(graphdef, p), *a),
                       compiler_options=FAST_COMPILE)
    return lambda *args: compiled(params, *args)


def test_layout_ends_each_row_at_its_last_segment():
    b = make_batch()
    tokens, real = in_context_layout(b["context"], b["context_mask"], b["question"],
                                     b["question_length"], b["answer"], SEG, xp=np)
    width = -(-(4 * SEG + 5 + SLOTS) // SEG) * SEG
    assert tokens.shape == real.shape == (3, width)
    for i in range(3):
        want = np.concatenate([b["context"][i][b["context_mask"][i]],
                               b["question"][i, :b["question_length"][i]], b["answer"][i]])
        assert real[i].sum() == len(want)
        assert not real[i, :width - len(want)].any()  # padding only in front
        np.testing.assert_array_equal(tokens[i, width - len(want):], want)
    traced = in_context_layout(*(jnp.asarray(b[k]) for k in (
        "context", "context_mask", "question", "question_length", "answer")), SEG)
    np.testing.assert_array_equal(traced[0], tokens)
    np.testing.assert_array_equal(traced[1], real)
    with pytest.raises(ValueError, match="answer slots do not fit"):
        in_context_layout(b["context"], None, b["question"], b["question_length"],
                          np.zeros((3, SEG), np.int32), SEG, xp=np)


def reference_loss(model, b):
    """Each row alone, laid out by hand and run segment by segment in a Python loop; the
    cross-entropy of its answer tokens read off the full logits of its last segment."""
    total, count = 0.0, 0
    for i in range(3):
        seq = np.concatenate([b["context"][i][b["context_mask"][i]],
                              b["question"][i, :b["question_length"][i]], b["answer"][i]])
        pad = -len(seq) % SEG
        seq = np.concatenate([np.zeros(pad, np.int32), seq])[None]
        real = np.arange(seq.shape[1])[None] >= pad
        if seq.shape[1] > SEG:
            state, _ = loop_segments(model, seq[:, :-SEG], real[:, :-SEG])
        else:
            state = initial_state(model, 1, capacity=1)
        last = seq[:, -SEG:][real[:, -SEG:]][None]
        read = model.read_memory(state.memory, state.buffer, state.buffer_valid)
        hidden = model.answer_hidden(read, last, assoc=state.assoc)
        logp = jax.nn.log_softmax(model.logits(hidden)[0])
        n = int(b["loss_mask"][i].sum())
        first = last.shape[1] - SLOTS
        for k in range(n):
            total -= float(logp[first - 1 + k, last[0, first + k]])
            count += 1
    return total / count


@pytest.mark.parametrize("memory", VARIANTS)
def test_loss_covers_the_answer_tokens_only(memory):
    model = make_model(**VARIANTS[memory])
    b = make_batch()
    loss, aux = jit(lambda m, batch: loss_fn(m, batch), model)(b)
    assert float(aux["answer_tokens"]) == 6
    np.testing.assert_allclose(float(loss), reference_loss(model, b), rtol=1e-5)
    # the slots after an answer are padding: changing them changes nothing
    other = dict(b, answer=np.where(b["answer"] == 0, 7, b["answer"]))
    np.testing.assert_allclose(float(jit(lambda m, x: loss_fn(m, x)[0], model)(other)),
                               float(loss), rtol=1e-6)


def test_scan_equals_loop_in_outputs_and_gradients(monkeypatch):
    model = make_model()
    b = make_batch(1)
    grad = nnx.value_and_grad(lambda m: loss_fn(m, b)[0])
    loss_scan, g_scan = jit(lambda m: grad(m), model)()
    monkeypatch.setattr(answer, "scan_segments", loop_segments)
    loss_loop, g_loop = jit(lambda m: grad(m), model)()
    np.testing.assert_allclose(float(loss_scan), float(loss_loop), rtol=1e-6)
    for a, c in zip(jax.tree.leaves(g_scan), jax.tree.leaves(g_loop), strict=True):
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-7)
    assert float(jnp.abs(g_scan["memory"][...]).sum()) > 0  # the memory gets a gradient


def test_answer_does_not_leak_into_the_context_or_earlier_slots():
    """A slot's prediction and the memory never see the answer tokens at or after it."""
    model = make_model()
    b = make_batch(2)

    def hidden(m, batch):
        return answer._in_context_loss(m, batch, None)[0]  # [B, A, d]

    run = jit(hidden, model)
    base = np.asarray(run(b))
    for slot in range(SLOTS):
        changed = b["answer"].copy()
        changed[:, slot] = (changed[:, slot] + 5) % 60 + 1
        out = np.asarray(run(dict(b, answer=changed)))
        np.testing.assert_allclose(out[:, :slot + 1], base[:, :slot + 1], rtol=1e-6, atol=1e-6)
        if slot + 1 < SLOTS:
            assert not np.allclose(out[:, slot + 1:], base[:, slot + 1:])


@pytest.mark.parametrize("memory", VARIANTS)
def test_greedy_equals_teacher_forced_argmax(memory):
    model = make_model(**VARIANTS[memory])
    b = make_batch(3)
    ids = np.asarray(jit(lambda m, *a: greedy_answer(m, *a, max_new_tokens=SLOTS), model)(
        b["context"], b["context_mask"], b["question"], b["question_length"]))
    assert ids.shape == (3, SLOTS)
    # the greedy tokens fed back as the answer: argmax reproduces every one of them
    forced = dict(b, answer=ids, loss_mask=np.ones_like(b["loss_mask"])[:, :SLOTS])
    _, aux = jit(lambda m, x: loss_fn(m, x), model)(forced)
    assert float(aux["accuracy"]) == 1.0
    # and a different answer is not reproduced
    wrong = dict(forced, answer=(ids + 1) % 64)
    assert float(jit(lambda m, x: loss_fn(m, x), model)(wrong)[1]["accuracy"]) < 1.0


@pytest.mark.parametrize("memory", VARIANTS)
def test_streamed_equals_one_scan(memory):
    model = make_model(**VARIANTS[memory])
    b = make_batch(4)
    one = np.asarray(jit(lambda m, *a: greedy_answer(m, *a, max_new_tokens=SLOTS), model)(
        b["context"], b["context_mask"], b["question"], b["question_length"]))
    state, last, lengths = stream_in_context(model, b["context"], b["question"],
                                             b["question_length"], answer_slots=SLOTS,
                                             mask=b["context_mask"], chunk_segments=2)
    streamed = np.asarray(generate_in_context(model, state, last, lengths,
                                              max_new_tokens=SLOTS))
    np.testing.assert_array_equal(streamed, one)
    # the memory entering the last segment equals the scan's
    tokens, real = in_context_layout(b["context"], b["context_mask"], b["question"],
                                     b["question_length"], np.zeros((3, SLOTS), np.int32), SEG,
                                     xp=np)
    state_scan, last_scan, len_scan = answer._last_segment(model, tokens, real)
    np.testing.assert_allclose(state.memory, state_scan.memory, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(last, last_scan)
    np.testing.assert_array_equal(lengths, len_scan)


@pytest.mark.parametrize("mode", ["in_context", "separate"])
def test_stop_id_ends_generation_with_the_same_answers(mode):
    """With stop_id, every row's tokens up to its first stop token are the full loop's, and a
    batch whose rows all stop at once generates nothing after it."""
    model = make_model() if mode == "in_context" else with_associations(
        RMT(get_config("test"), rngs=nnx.Rngs(0)))
    b = make_batch(5)
    args = (b["context"], b["context_mask"], b["question"], b["question_length"])

    def run(stop_id, *a):
        return np.asarray(jit(lambda m, *x: greedy_answer(m, *x, max_new_tokens=SLOTS,
                                                          stop_id=stop_id), model)(*a))

    full = run(None, *args)
    for stop in {int(t) for t in full[:, 1]} | {int(full[0, 0])}:
        out = run(stop, *args)
        for row_full, row in zip(full, out, strict=True):
            hits = np.flatnonzero(row_full == stop)
            end = hits[0] + 1 if hits.size else SLOTS
            np.testing.assert_array_equal(row[:end], row_full[:end])
    # three copies of row 0: all stop at the first token, nothing is generated after it
    same = tuple(np.repeat(np.asarray(x)[:1], 3, axis=0) for x in args)
    first = run(None, *same)
    assert (first[:, 1:] != 0).any()  # the full loop writes there
    out = run(int(first[0, 0]), *same)
    np.testing.assert_array_equal(out[:, 0], first[:, 0])
    assert (out[:, 1:] == 0).all()
