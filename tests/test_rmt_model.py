"""The model: configs and bad input, parameter count, attention maps, bf16, decoding, learning."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rmt_jax import (
    PRESETS,
    RMT,
    answer_logits,
    count_params,
    generate_answer,
    get_config,
    loss_fn,
    scan_segments,
    stream_infer,
)
from tests.test_rmt_recurrence import jit, make_model, random_tokens

# numbers and behaviour, not speed: XLA's optimisations off (conftest.fast_compiles)
pytestmark = pytest.mark.usefixtures("fast_compiles")


@pytest.mark.parametrize("overrides, message", [
    (dict(heads=3), "d_model=32 is not divisible by heads=3"),
    (dict(mem_tokens=0), "mem_tokens=0 must be >= 1"),
    (dict(mem_tokens=-2), "mem_tokens=-2 must be >= 1"),
    (dict(memory="rmt_r", mem_tokens=20), r"needs 68 positions .* max_positions=64"),
    (dict(segment_len=100), r"needs 108 positions .* lower segment_len"),
    (dict(remat_policy="bogus"), "unknown remat_policy 'bogus'"),
    (dict(positions="sinusoid"), "unknown positions 'sinusoid'"),
    (dict(positions="rope", d_model=30, heads=2), "positions='rope' needs an even head_dim"),
    (dict(scan_unroll=0), "scan_unroll=0 must be >= 1"),
    (dict(dtype="float16"), "expected one of"),
    (dict(attention_map_layers=(5,)), r"attention_map_layers \[5\] out of range"),
    (dict(bptt_segments=0), "bptt_segments=0 must be >= 1 or None"),
    (dict(attention_impl="flash"), "attention_impl='flash'"),
    (dict(init_std=0.0), "init_std=0.0 must be positive"),
    (dict(memory="lstm"), "unknown memory 'lstm': expected one of"),
    (dict(memory="armt"), r"ARMT's d_mem=0 must lie in 1..d_model=32"),
    (dict(memory="armt", d_mem=64), r"ARMT's d_mem=64 must lie in 1..d_model=32"),
    (dict(d_mem=8), r"d_mem=8 is ARMT's key width but memory='rmt'"),
    (dict(memory="rmt_r", d_mem=8), r"d_mem=8 is ARMT's key width but memory='rmt_r'"),
    (dict(retrieval_dropout=0.2), r"retrieval_dropout=0.2 is RMT-R's but memory='rmt'"),
    (dict(memory="armt", d_mem=8, retrieval_dropout=0.1), r"memory='armt' has no retrieval"),
    (dict(memory="none"), "memory='none' has no memory tokens but mem_tokens=4"),
    (dict(memory="none", mem_tokens=0), "set answer_mode='in_context'"),
    (dict(memory="rmt_r", retrieval_dropout=1.0), r"dropout rates must lie in \[0, 1\)"),
])
def test_bad_config_raises_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        get_config("test", **overrides)


def test_bad_input_raises_clear_error():
    model = make_model()
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        get_config("huge")
    with pytest.raises(ValueError, match=r"empty context \(shape \(1, 0\)\)"):
        scan_segments(model, np.zeros((1, 0), np.int32))
    with pytest.raises(ValueError, match=r"context must be \[batch, tokens\]"):
        scan_segments(model, np.zeros((8,), np.int32))
    with pytest.raises(ValueError, match="context_mask shape"):
        scan_segments(model, np.zeros((1, 8), np.int32), np.ones((1, 9), bool))
    with pytest.raises(ValueError, match="attention_map_layers is empty"):
        scan_segments(model, np.ones((1, 8), np.int32), return_attention=True)
    with pytest.raises(ValueError, match="empty input"):
        stream_infer(model, np.zeros((0,), np.int32))
    state, _ = scan_segments(model, np.ones((1, 8), np.int32))
    with pytest.raises(ValueError, match=r"answer segment needs 84 positions .* raise max_pos"):
        answer_logits(model, state, np.ones((1, 80), np.int32))
    with pytest.raises(ValueError, match="empty question"):
        generate_answer(model, state, np.ones((1, 0), np.int32), max_new_tokens=1)


@pytest.mark.parametrize("init_std,scaled", [(0.02, True), (0.125, True), (0.125, False)])
def test_init_std_sets_the_scale_of_fresh_weights(init_std, scaled):
    cfg = get_config("test", d_model=64, init_std=init_std, memory="rmt_r", vocab_size=512,
                     scaled_residual_init=scaled)
    model = RMT(cfg, rngs=nnx.Rngs(0))
    block = model.blocks[0]
    out_std = init_std / math.sqrt(2 * cfg.layers) if scaled else init_std
    for name, w, std in [("wte", model.wte, init_std), ("wpe", model.wpe, init_std / 2),
                         ("memory", model.memory, init_std), ("qkv", block.attn.qkv, init_std),
                         ("fc", block.mlp.fc, init_std),
                         ("attn out", block.attn.out, out_std),
                         ("mlp out", block.mlp.proj, out_std),
                         ("retrieval wq", model.retrieval.wq, init_std)]:
        assert float(jnp.std(w[...])) == pytest.approx(std, rel=0.2), name


def test_presets_build_and_gpt2_small_has_gpt2_parameter_count():
    for name, cfg in PRESETS.items():
        abstract = nnx.eval_shape(lambda cfg=cfg: RMT(cfg, rngs=nnx.Rngs(0)))
        assert count_params(abstract) > count_params(abstract, exclude_embeddings=True) > 0, name
    gpt2 = nnx.eval_shape(lambda: RMT(PRESETS["gpt2_small"], rngs=nnx.Rngs(0)))
    # GPT-2 small (124,439,808 with 1024 positions, tied head) plus 16 x 768 memory
    assert count_params(gpt2) == 124_439_808 + 16 * 768
    assert count_params(gpt2, exclude_embeddings=True) == 12 * (12 * 768**2 + 13 * 768) + 2 * 768


def test_attention_maps_on_and_off():
    model = make_model(attention_map_layers=(0, 1))
    context = random_tokens((2, 3 * 8 - 2))
    on = jit(lambda m: scan_segments(m, context, return_attention=True), model)
    off = jit(lambda m: scan_segments(m, context), model)
    state_on, maps = on()
    state_off, none = off()
    assert none is None
    assert sorted(maps) == ["layer_0", "layer_1"]
    t = 4 + 8 + 4
    assert maps["layer_1"].shape == (3, 2, 2, t, t)  # [segments, batch, heads, t, t]
    np.testing.assert_allclose(maps["layer_0"].sum(-1), 1.0, rtol=1e-5)
    assert float(jnp.abs(jnp.triu(maps["layer_0"], 1)).max()) == 0.0  # causal
    np.testing.assert_allclose(state_on.memory, state_off.memory, rtol=1e-5, atol=1e-6)
    # with the maps off, nothing of shape [.., t, t] leaves the computation
    outs = jax.make_jaxpr(lambda: scan_segments(model, context))().out_avals
    assert not any(a.shape[-2:] == (t, t) for a in outs)
    assert len(jax.make_jaxpr(lambda: scan_segments(model, context, return_attention=True))()
               .out_avals) == len(outs) + 2


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_bf16_runs(param_dtype):
    cfg = dict(dtype="bfloat16", param_dtype=param_dtype, memory="rmt_r")
    model = make_model(**cfg)
    ref = make_model(memory="rmt_r")
    batch = dict(context=random_tokens((2, 20)), query=random_tokens((2, 5), seed=1),
                 loss_mask=np.array([[0, 0, 1, 1, 1]] * 2, np.float32))
    step = lambda m: nnx.value_and_grad(loss_fn, has_aux=True)(m, batch)  # noqa: E731
    (loss, _), grads = jit(step, model)()
    (loss_ref, _), _ = jit(step, ref)()
    leaves = jax.tree.leaves(grads)
    assert all(g.dtype == jnp.dtype(param_dtype) for g in leaves)
    assert all(bool(jnp.isfinite(g.astype(jnp.float32)).all()) for g in leaves)
    assert abs(float(loss) - float(loss_ref)) < 0.05  # same init, lower precision
    state, _ = jit(lambda m: scan_segments(m, batch["context"]), model)()
    assert state.memory.dtype == jnp.bfloat16 and state.buffer.dtype == jnp.bfloat16


def test_generate_answer_is_greedy_and_respects_question_lengths():
    model = make_model(memory="rmt_r")
    context = random_tokens((2, 20))
    question = random_tokens((2, 3), seed=2)

    def run(model, question, lengths):
        state, _ = scan_segments(model, context)
        return generate_answer(model, state, question, max_new_tokens=3,
                               question_lengths=lengths), state

    answer, state = jit(run, model)(question, None)
    first = answer_logits(model, state, question)[:, -1].argmax(-1)
    np.testing.assert_array_equal(answer[:, 0], first)
    extended = np.concatenate([question, np.asarray(answer[:, :1])], axis=1)
    np.testing.assert_array_equal(answer[:, 1], answer_logits(model, state, extended)[:, -1]
                                  .argmax(-1))
    # row 1 asks a shorter question, right-padded with junk
    padded = question.copy()
    padded[1, 2] = 63
    answer_short, _ = jit(run, model)(padded, np.array([3, 2]))
    answer_ref, _ = jit(run, model)(question[:, :2], None)
    np.testing.assert_array_equal(answer_short[1], answer_ref[1])
    np.testing.assert_array_equal(answer_short[0], answer[0])


def test_tiny_model_learns_a_copy_task_through_memory():
    """The answer is the token filling segment 1; segment 2 is the same filler for everyone.

    Without the memory the best loss is ln(8) ~ 2.08 (8 equally likely answers).
    """
    model = RMT(get_config("test"), rngs=nnx.Rngs(0))
    batch_size = 8
    answers = np.random.RandomState(0).choice(np.arange(10, 64), batch_size, replace=False)
    context = np.concatenate([np.repeat(answers[:, None], 8, 1),
                              np.full((batch_size, 8), 3)], axis=1).astype(np.int32)
    batch = dict(context=context,
                 query=np.stack([np.ones(batch_size), answers], 1).astype(np.int32),
                 loss_mask=np.array([[0, 1]] * batch_size, np.float32))
    optimizer = nnx.Optimizer(model, optax.adamw(3e-3), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, batch):
        (loss, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, batch)
        optimizer.update(model, grads)
        return loss, aux["accuracy"]

    losses = [float(train_step(model, optimizer, batch)[0]) for _ in range(60)]
    _, accuracy = train_step(model, optimizer, batch)
    assert losses[0] > 3.5
    assert losses[-1] < 1.0, losses
    assert float(accuracy) == 1.0


def test_answer_window_gives_the_same_loss_and_gradients():
    """With `answer` in the batch the LM head runs on the answer window only: same numbers."""
    from rmt_jax import RMT, get_config, loss_fn

    model = RMT(get_config("test", vocab_size=64, max_positions=64), rngs=nnx.Rngs(0))
    rng = np.random.RandomState(0)
    query = rng.randint(1, 64, (3, 12)).astype(np.int32)
    loss_mask = np.zeros((3, 12), np.float32)
    for row, (start, n) in enumerate([(4, 2), (9, 3), (1, 1)]):
        loss_mask[row, start : start + n] = 1
    batch = {"context": rng.randint(1, 64, (3, 20)).astype(np.int32), "query": query,
             "loss_mask": loss_mask}
    windowed = {**batch, "answer": np.zeros((3, 3), np.int32)}
    # compiled (one program per batch layout): op by op, the backward pass took 20 s
    grad = jit(lambda m, b: nnx.value_and_grad(loss_fn, has_aux=True)(m, b), model)
    (full, aux_full), g_full = grad(batch)
    (win, aux_win), g_win = grad(windowed)
    np.testing.assert_allclose(win, full, rtol=1e-6)
    np.testing.assert_allclose(aux_win["accuracy"], aux_full["accuracy"])
    for a, b in zip(jax.tree.leaves(g_win), jax.tree.leaves(g_full), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("positions", ["learned", "alibi", "rope"])
def test_positions_are_causal_and_the_attention_map_path_agrees(positions):
    cfg = get_config("test", positions=positions, attention_map_layers=(0, 1))
    model = RMT(cfg, rngs=nnx.Rngs(0))
    assert (model.wpe is None) == (positions != "learned")
    tokens = jnp.asarray(random_tokens((2, 20), seed=1))
    logits = model.lm_logits(tokens)
    changed = model.lm_logits(tokens.at[:, 10].set(tokens[:, 10] % 60 + 1))
    np.testing.assert_array_equal(logits[:, :10], changed[:, :10])  # nothing flows backwards
    assert float(jnp.abs(logits[:, 10:] - changed[:, 10:]).max()) > 1e-3
    fused, _, _ = model.transformer(model.embed(tokens))
    explicit, maps, _ = model.transformer(model.embed(tokens), return_attention=True)
    np.testing.assert_allclose(fused, explicit, atol=1e-5)
    assert maps["layer_0"].shape == (2, cfg.heads, 20, 20)


def test_rope_and_alibi_see_relative_positions_only():
    """Shifting a sequence right keeps each token's attention to the tokens before it: the
    attention weights of the shifted tokens equal the originals' (not so for learned ones)."""
    for positions, relative in (("rope", True), ("alibi", True), ("learned", False)):
        cfg = get_config("test", positions=positions, attention_map_layers=(0,), layers=1)
        model = RMT(cfg, rngs=nnx.Rngs(3))
        x = model.embed(jnp.asarray(random_tokens((1, 12), seed=2)))
        # the same 12 tokens after 5 others: the first layer's weights among the 12 tokens,
        # renormalised, equal those without the 5 when only relative positions count
        pre = model.embed(jnp.asarray(random_tokens((1, 5), seed=4)))
        _, a, _ = model.transformer(x, return_attention=True)
        _, b, _ = model.transformer(jnp.concatenate([pre, x], 1), return_attention=True)
        wa = a["layer_0"][0, :, :, :]  # [h, 12, 12]
        wb = b["layer_0"][0, :, 5:, 5:]
        wb = wb / wb.sum(-1, keepdims=True)
        close = np.allclose(wa, wb, atol=1e-5)
        assert close == relative, positions


def test_the_core_imports_no_data_pipeline_or_run_layer():
    import subprocess
    import sys

    code = ("import sys; import rmt_jax.core.answer, rmt_jax.core.streaming, rmt_jax; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('grain', 'tensorflow_datasets', 'tensorflow', 'orbax', 'ml_collections', "
            "'babilong_tfds') or m in ('rmt_jax.train_lib', 'rmt_jax.input_pipeline')); "
            "print(bad); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_untied_head_leaves_unseen_tokens_embeddings_without_gradient():
    """With the tied head every token's embedding row gets the softmax's gradient, answered or
    not; with `tied_head=False` only the tokens read do, and the head gets the rest."""
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 12)))  # ids < 50 only
    grads = {}
    for tied in (True, False):
        cfg = get_config("test", vocab_size=128, tied_head=tied)
        model = RMT(cfg, rngs=nnx.Rngs(0))
        assert (getattr(model, "lm_head", None) is None) == tied

        def loss(model):
            logits = model.lm_logits(tokens[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

        grads[tied] = nnx.grad(loss)(model)
        if not tied:  # the head is its own matrix: the logits follow it, not the embedding
            h = jnp.ones((1, cfg.d_model))
            np.testing.assert_allclose(model.logits(h), h @ model.lm_head[...].T, rtol=1e-5)
    unseen = slice(50, 128)
    assert float(jnp.abs(grads[True].wte[...][unseen]).max()) > 0
    assert float(jnp.abs(grads[False].wte[...][unseen]).max()) == 0
    assert float(jnp.abs(grads[False].lm_head[...][unseen]).max()) > 0
    n = count_params(RMT(get_config("test", vocab_size=128, tied_head=False),
                         rngs=nnx.Rngs(0)))
    assert n == count_params(RMT(get_config("test", vocab_size=128), rngs=nnx.Rngs(0))) \
        + 128 * get_config("test").d_model
