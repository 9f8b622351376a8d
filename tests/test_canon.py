"""Canon layers (`model.canon_kernel`): a causal depthwise convolution added to the input of
every attention and MLP. It starts as the identity, sees only the positions before, gets a
gradient from its first step, and decodes with the KV cache as a full pass does."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from jax.tree_util import DictKey

from rmt_jax import RMT, get_config, loss_fn, scan_segments, sharding
from rmt_jax.core.answer import _last_segment, generate_in_context
from rmt_jax.core.model import Canon
from tests.test_kv_cache import SEG, SLOTS, in_context_inputs, rerun_window
from tests.test_rmt_recurrence import jit, random_tokens

pytestmark = pytest.mark.usefixtures("fast_compiles")


def with_random_taps(model: RMT, std: float = 0.5) -> RMT:
    """Canon taps start at zero (the identity): random ones, so the tests see them at work."""
    for i, block in enumerate(model.blocks):
        for j, canon in enumerate((block.canon_attn, block.canon_mlp)):
            canon.weight[...] = std * jax.random.normal(jax.random.key(10 + 2 * i + j),
                                                        canon.weight.shape)
    return model


@pytest.mark.parametrize("kernel", [0, 1, -2])
def test_a_kernel_of_under_two_taps_is_off_or_an_error(kernel):
    if kernel == 0:
        assert get_config("test", canon_kernel=0).canon_kernel == 0
        assert RMT(get_config("test"), rngs=nnx.Rngs(0)).blocks[0].canon_attn is None
        return
    with pytest.raises(ValueError, match=f"canon_kernel={kernel}: .* 0 \\(off\\) or >= 2"):
        get_config("test", canon_kernel=kernel)


def test_the_convolution_is_causal_and_depthwise_against_numpy():
    cfg = get_config("test", canon_kernel=3)
    canon = Canon(cfg)
    w = np.random.RandomState(0).normal(size=(3, cfg.d_model)).astype(np.float32)
    canon.weight[...] = jnp.asarray(w)
    x = np.random.RandomState(1).normal(size=(2, 7, cfg.d_model)).astype(np.float32)
    expected = x.copy()
    for t in range(7):
        for j in range(3):
            if t - j >= 0:
                expected[:, t] += w[j] * x[:, t - j]
    np.testing.assert_allclose(canon(jnp.asarray(x)), expected, rtol=1e-5, atol=1e-6)


def test_fresh_canon_layers_compute_what_the_backbone_computes():
    tokens = jnp.asarray(random_tokens((2, 20), seed=1))
    plain = RMT(get_config("test", positions="rope"), rngs=nnx.Rngs(0))
    canon = RMT(get_config("test", positions="rope", canon_kernel=4), rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(plain.lm_logits(tokens), canon.lm_logits(tokens))
    with_random_taps(canon)
    assert float(jnp.abs(plain.lm_logits(tokens) - canon.lm_logits(tokens)).max()) > 1e-2


def test_canon_layers_see_no_later_position():
    model = with_random_taps(RMT(get_config("test", canon_kernel=4), rngs=nnx.Rngs(0)))
    tokens = jnp.asarray(random_tokens((2, 20), seed=2))
    logits = model.lm_logits(tokens)
    changed = model.lm_logits(tokens.at[:, 10].set(tokens[:, 10] % 60 + 1))
    np.testing.assert_array_equal(logits[:, :10], changed[:, :10])
    assert float(jnp.abs(logits[:, 10:] - changed[:, 10:]).max()) > 1e-3


def test_zero_taps_get_a_gradient_at_the_first_step():
    model = RMT(get_config("test", canon_kernel=4, answer_mode="in_context"), rngs=nnx.Rngs(0))
    batch = {"context": jnp.asarray(random_tokens((2, 2 * SEG), seed=3)),
             "question": jnp.asarray(random_tokens((2, 3), seed=4)),
             "question_length": jnp.array([3, 2], jnp.int32),
             "answer": jnp.asarray(random_tokens((2, 2), seed=5)),
             "loss_mask": jnp.ones((2, 2), jnp.float32)}
    grads = nnx.grad(lambda m: loss_fn(m, batch)[0])(model)
    for block in grads.blocks.values():
        for name in ("canon_attn", "canon_mlp"):
            assert float(jnp.abs(block[name]["weight"][...]).max()) > 0, name


@pytest.mark.parametrize("memory", ["rmt", "rmt_r"])
def test_cached_decoding_with_canon_layers_is_rerunning_the_window(memory):
    cfg = get_config("test", positions="rope", answer_mode="in_context", canon_kernel=3,
                     **({"memory": "rmt_r"} if memory == "rmt_r" else {}))
    model = with_random_taps(RMT(cfg, rngs=nnx.Rngs(0)))
    _, _, _, tokens, mask = in_context_inputs(model, 3 * SEG - 2)

    def both(m, tokens, mask):
        state, last, lengths = _last_segment(m, tokens, mask)
        read = m.read_memory(state.memory, state.buffer, state.buffer_valid)
        cached = generate_in_context(m, state, last, lengths, max_new_tokens=SLOTS)
        return cached, rerun_window(m, read, last, lengths - SLOTS, SLOTS, state.assoc)

    cached, reference = jit(both, model)(tokens, mask)
    np.testing.assert_array_equal(cached, reference)
    assert len(np.unique(np.asarray(cached))) > 1


def test_a_decoded_position_has_the_full_pass_hidden_state_with_canon_layers():
    model = with_random_taps(RMT(get_config("test", canon_kernel=4), rngs=nnx.Rngs(0)))
    tokens = jnp.asarray(random_tokens((2, SEG), seed=5))
    state, _ = scan_segments(model, jnp.asarray(random_tokens((2, 2 * SEG), seed=6)))
    read = model.read_memory(state.memory, state.buffer, state.buffer_valid)
    rows, pos = jnp.arange(2), jnp.array([1, 6])  # row 0: taps reach back into the read rows
    new = jnp.array([7, 9], jnp.int32)
    _, caches = model.answer_prefill(read, tokens.at[rows, pos].set(0), None)
    h, caches = model.answer_decode(new, read.shape[1] + pos, caches)
    full = model.answer_hidden(read, tokens.at[rows, pos].set(new))
    np.testing.assert_allclose(h, full[rows, pos], rtol=1e-5, atol=1e-5)
    h2, _ = model.answer_decode(jnp.array([1, 2], jnp.int32), read.shape[1] + pos + 1, caches)
    full2 = model.answer_hidden(read, tokens.at[rows, pos].set(new)
                                .at[rows, pos + 1].set(jnp.array([1, 2])))
    np.testing.assert_allclose(h2, full2[rows, pos + 1], rtol=1e-5, atol=1e-5)


def test_canon_taps_are_replicated_on_a_model_axis():
    spec = sharding.partition_spec([DictKey(n) for n in ("blocks", 0, "canon_attn", "weight")],
                                   (4, 32), 2)
    assert spec == P()


def test_gpt2_weights_with_fresh_canon_layers_are_gpt2(tmp_path):
    from tests.test_pretrained import CFG, loaded, random_gpt2, write_checkpoint

    folder = write_checkpoint(tmp_path / "ckpt", random_gpt2())
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, CFG.vocab_size, (2, 21)))
    plain = loaded(folder).lm_logits(tokens)
    canon = loaded(folder, CFG.replace(canon_kernel=4))
    assert float(jnp.abs(canon.blocks[0].canon_attn.weight[...]).max()) == 0
    np.testing.assert_array_equal(canon.lm_logits(tokens), plain)
