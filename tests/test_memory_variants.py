"""ARMT against the published update rule, its causality and its constant-size state; the
full-attention baseline (memory='none') reading the last window; clear errors."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rmt_jax import RMT, get_config, greedy_answer, loss_fn, scan_segments, stream_in_context
from rmt_jax.core.answer import generate_in_context
from rmt_jax.core.model import Associations
from tests.conftest import REPO
from tests.test_rmt_recurrence import jit, make_model, random_tokens
from tests.test_train_lib import subprocess_env

# numbers and behaviour, not speed: XLA's optimisations off (conftest.fast_compiles)
pytestmark = pytest.mark.usefixtures("fast_compiles")

SEG = 8


def published_write(matrix, norm, m, wk, wv, wb, bias, nu=3, eps=1e-5):
    """The ARMT update of `RodkinIvan/associative-recurrent-memory-transformer` (modeling_amt,
    `update_mem`), written again in numpy for one batch row: m [n, d]."""
    def phi(x):
        x = np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], -1)
        rolled = np.concatenate([np.roll(x, j, -1) for j in range(1, nu + 1)], -1)
        return np.concatenate([x] * nu, -1) * rolled

    mk = phi(m @ wk)
    new_mv = m @ wv
    denom = (mk @ norm)[:, None] + eps
    prev_mv = (mk @ matrix) / denom
    coef = np.clip(1 - denom / ((np.linalg.norm(mk, axis=-1) ** 2) + eps)[:, None], 0, 1)
    mb = 1 / (1 + np.exp(-(m @ wb + bias)))
    matrix = matrix + np.einsum("jk,jt,j->kt", mk, new_mv - prev_mv, mb)
    return matrix, norm + (coef * mk).sum(0), phi


def test_armt_write_and_read_follow_the_published_rule():
    model = make_model(memory="armt", d_mem=8)
    layer = model.associative[0]
    rng = np.random.RandomState(0)
    wk, wv = np.asarray(layer.wk[...]), np.asarray(layer.wv[...])
    wb, bias = np.asarray(layer.wb[...]), float(layer.wb_bias[...])
    matrix, norm = np.zeros((48, 32)), np.zeros(48)  # d_key = 2 * 3 * 8
    a, z = jnp.zeros((1, 48, 32)), jnp.zeros((1, 48))
    for _ in range(3):  # the first write (nothing stored) and two corrected ones
        m = rng.randn(4, 32).astype(np.float32)
        matrix, norm, phi = published_write(matrix, norm, m, wk, wv, wb, bias)
        a, z = layer.write(a, z, jnp.asarray(m)[None])
        np.testing.assert_allclose(a[0], matrix, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(z[0], norm, rtol=1e-4, atol=1e-5)
    h = rng.randn(5, 32).astype(np.float32)
    mq = phi(h @ np.asarray(layer.wq[...]))
    expected = (mq @ matrix) / ((mq @ norm)[:, None] + 1e-5)
    np.testing.assert_allclose(layer.read(a, z, jnp.asarray(h)[None])[0], expected,
                               rtol=1e-4, atol=1e-5)
    assert float(np.abs(expected).max()) > 1e-2  # the memory returns something


def test_armt_state_is_constant_in_size_and_read_within_a_segment_is_causal():
    model = make_model(memory="armt", d_mem=8)
    short, _ = scan_segments(model, random_tokens((2, 2 * SEG)))
    long, _ = scan_segments(model, random_tokens((2, 9 * SEG), seed=1))
    assert short.buffer is None
    assert jax.tree.map(jnp.shape, short.assoc) == jax.tree.map(jnp.shape, long.assoc)
    assert short.assoc.matrix.shape == (2, 2, 48, 32)  # [B, layers, d_key, d]
    tokens = jnp.asarray(random_tokens((2, SEG), seed=2))

    def hidden(tokens):
        return model.answer_hidden(model.read_memory(long.memory), tokens, assoc=long.assoc)

    base = hidden(tokens)
    changed = hidden(tokens.at[:, 5].set(tokens[:, 5] % 60 + 1))
    np.testing.assert_allclose(changed[:, :5], base[:, :5], rtol=1e-6, atol=1e-6)
    assert float(jnp.abs(changed[:, 5:] - base[:, 5:]).max()) > 1e-3
    # the associations are read: without them the same tokens give other outputs
    bare = model.answer_hidden(model.read_memory(long.memory), tokens,
                               assoc=Associations(*map(jnp.zeros_like, long.assoc)))
    assert float(jnp.abs(bare - base).max()) > 1e-3


def test_armt_gradients_reach_every_associative_parameter():
    model = make_model(memory="armt", d_mem=8)
    context = random_tokens((2, 3 * SEG), seed=3)
    query = jnp.arange(6, dtype=jnp.int32)[None].repeat(2, 0)

    def f(model):
        state, _ = scan_segments(model, context)
        h = model.answer_hidden(model.read_memory(state.memory), query, assoc=state.assoc)
        return (model.logits(h) ** 2).mean()

    grads = jit(lambda m: nnx.grad(f)(m), model)()
    for name in ("wq", "wk", "wv", "wb", "wb_bias"):
        g = grads["associative"][0][name][...]
        assert float(jnp.abs(g).max()) > 0, name
    assert float(jnp.abs(grads["memory"][...]).max()) > 0  # the write embeddings learn too


def full_model(window_segments=2):
    cfg = get_config("test", memory="none", mem_tokens=0, answer_mode="in_context",
                     max_positions=window_segments * SEG)
    return RMT(cfg, rngs=nnx.Rngs(0))


def batch(seed=0, width=5 * SEG):
    rng = np.random.RandomState(seed)
    context = rng.randint(1, 64, (2, width)).astype(np.int32)
    question = rng.randint(1, 64, (2, 3)).astype(np.int32)
    answer = rng.randint(1, 64, (2, 2)).astype(np.int32)
    return {"context": context, "question": question, "question_length": np.array([3, 2]),
            "answer": answer, "loss_mask": np.ones((2, 2), np.float32),
            "query": np.zeros((2, 5), np.int32)}


def test_full_attention_reads_the_last_window_only():
    model = full_model()
    b = batch()
    run = jit(lambda m, x: loss_fn(m, x)[0], model)
    base = float(run(b))
    # the window: the last 16 tokens of `context; question; answer`: row 0 ends 3 + 2 tokens
    # after the context (row 1: 2 + 2), so its last 11 (12) context tokens are inside and
    # the rest is not seen
    early = b["context"].copy()
    early[0, :-11] = (early[0, :-11] + 7) % 60 + 1
    early[1, :-12] = (early[1, :-12] + 7) % 60 + 1
    assert float(run(dict(b, context=early))) == pytest.approx(base, abs=1e-6)
    late = b["context"].copy()
    late[0, -3] = late[0, -3] % 60 + 1
    assert abs(float(run(dict(b, context=late))) - base) > 1e-5
    # the same as the backbone's language model over that window, by hand
    seq = np.concatenate([b["context"][0], b["question"][0], b["answer"][0]])[-16:]
    logp = jax.nn.log_softmax(model.lm_logits(jnp.asarray(seq)[None])[0])
    ref = -(logp[-3, seq[-2]] + logp[-2, seq[-1]]) / 2
    row0 = float(run(dict(b, loss_mask=np.array([[1, 1], [0, 0]], np.float32))))
    assert row0 == pytest.approx(float(ref), rel=1e-5)


def test_full_attention_decodes_as_trained_and_streams_the_window():
    model = full_model(window_segments=3)
    b = batch(1, width=7 * SEG)
    ids = np.asarray(jit(lambda m, *a: greedy_answer(m, *a, max_new_tokens=2), model)(
        b["context"], None, b["question"], b["question_length"]))
    forced = dict(b, answer=ids)
    assert float(jit(lambda m, x: loss_fn(m, x)[1]["accuracy"], model)(forced)) == 1.0
    state, last, lengths = stream_in_context(model, b["context"], b["question"],
                                             b["question_length"], answer_slots=2)
    assert last.shape == (2, 3 * SEG)  # one window, nothing streamed
    np.testing.assert_array_equal(
        generate_in_context(model, state, last, lengths, max_new_tokens=2), ids)


@pytest.mark.parametrize("overrides,message", [
    (["--config.model.memory=lstm"], "unknown memory 'lstm'"),
    (["--config.model.memory=armt"], "ARMT's d_mem=0 must lie in 1..d_model=32"),
    (["--config.model.memory=armt", "--config.model.d_mem=33"], "d_mem=33 must lie in"),
    (["--config.model.d_mem=8"], "d_mem=8 is ARMT's key width but memory='rmt'"),
    (["--config.model.retrieval_dropout=0.2"], "retrieval_dropout=0.2 is RMT-R's"),
    (["--config.model.retrieval_variant=official"], "retrieval_variant='official' is RMT-R's"),
    (["--config.model.memory=none"], "memory='none' has no memory tokens but mem_tokens=2"),
    (["--config.model.write_positions=own", "--config.model.positions=rope"],
     "it needs positions='learned' and a memory"),
])
def test_bad_memory_options_stop_the_trainer_before_anything_is_written(tmp_path, overrides,
                                                                        message):
    workdir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "launch.train", "--config=configs/rmt_babilong.py:smoke,synthetic",
         f"--workdir={workdir}", *overrides], cwd=REPO, capture_output=True, text=True,
        timeout=300, env=subprocess_env())
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and last.startswith("error: ") and message in last, last
    assert not workdir.exists() or not any(workdir.iterdir())


@pytest.mark.parametrize("memory", ["armt", "rmt"])
def test_own_write_positions_are_the_rows_after_max_positions(memory):
    """write_positions='own': the write tokens read rows max_positions.. of the position
    table, whatever the segment's length; the rows past the real tokens, which 'follow' gives
    the write tokens, then change nothing that is carried."""
    overrides = {"memory": memory, "d_mem": 8} if memory == "armt" else {}
    context = random_tokens((2, 2 * SEG), seed=11)
    mask = np.ones_like(context, bool)
    mask[:, SEG + 5:] = False  # the second segment holds 5 real tokens

    def carried_with(model, rows):
        """What is carried after both segments, with random changes to `rows` of wpe."""
        wpe = np.asarray(model.wpe[...])
        changed = wpe.copy()
        changed[rows] += np.random.RandomState(0).normal(size=changed[rows].shape)
        try:
            model.wpe[...] = changed
            state, _ = scan_segments(model, context, mask)
        finally:
            model.wpe[...] = wpe
        return np.asarray(state.memory if state.assoc is None else state.assoc.matrix)

    own, follow = make_model(**overrides, write_positions="own"), make_model(**overrides)
    cfg = own.config
    assert own.wpe.shape == (cfg.max_positions + cfg.mem_tokens, cfg.d_model)
    past_tokens = slice(cfg.read_tokens + SEG, cfg.max_positions)  # no real token sits there
    base = carried_with(own, slice(0, 0))
    assert np.abs(carried_with(own, slice(cfg.max_positions, None)) - base).max() > 1e-3
    np.testing.assert_array_equal(carried_with(own, past_tokens), base)
    # 'follow' puts the first segment's write tokens there
    assert np.abs(carried_with(follow, past_tokens)
                  - carried_with(follow, slice(0, 0))).max() > 1e-3


def test_write_positions_options_are_checked():
    with pytest.raises(ValueError, match="unknown write_positions 'wrap'"):
        get_config("test", write_positions="wrap")
    with pytest.raises(ValueError, match="positions='alibi', memory='rmt': it needs"):
        get_config("test", write_positions="own", positions="alibi")
    with pytest.raises(ValueError, match="memory='none'"):
        get_config("test", write_positions="own", memory="none", mem_tokens=0,
                   answer_mode="in_context")
    # the write tokens no longer take regular positions: a segment needs N fewer of them
    cfg = get_config("test", write_positions="own")
    assert cfg.segment_positions - cfg.mem_tokens <= cfg.max_positions
