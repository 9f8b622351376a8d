"""Attention in query blocks (`model.attention_chunk`): the same outputs and gradients as the
whole window at once, for every kind of position, and clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rmt_jax import RMT, get_config, loss_fn
from rmt_jax.core.model import alibi_bias, alibi_slopes, chunked_attention
from tests.test_memory_variants import batch
from tests.test_rmt_recurrence import jit

# numbers and behaviour, not speed: XLA's optimisations off (conftest.fast_compiles)
pytestmark = pytest.mark.usefixtures("fast_compiles")


@pytest.mark.parametrize("alibi", [False, True])
def test_chunked_attention_is_the_whole_windows(alibi):
    rng = np.random.RandomState(0)
    q, k, v = (jnp.asarray(rng.randn(2, 37, 4, 8).astype(np.float32)) for _ in range(3))
    bias = alibi_bias(4, 37) if alibi else None
    slopes = alibi_slopes(4) if alibi else None

    def whole(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=True)

    def chunked(q, k, v):
        return chunked_attention(q, k, v, 8, slopes)  # 37 = 4 blocks of 8 and 5 more

    np.testing.assert_allclose(chunked(q, k, v), whole(q, k, v), rtol=1e-5, atol=1e-5)
    probe = jnp.asarray(rng.randn(2, 37, 4, 8).astype(np.float32))
    def probed(f):
        return jax.grad(lambda *a: (f(*a) * probe).sum(), argnums=(0, 1, 2))(q, k, v)

    grads = [probed(chunked), probed(whole)]
    for got, want in zip(*grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("positions", ["learned", "rope", "alibi"])
def test_a_full_attention_model_trains_the_same_in_blocks(positions):
    def model(chunk):
        cfg = get_config("test", memory="none", mem_tokens=0, answer_mode="in_context",
                         max_positions=40, positions=positions, attention_chunk=chunk)
        return RMT(cfg, rngs=nnx.Rngs(0))

    b = batch(width=5 * 8)

    def loss_and_grads(m, b):
        return nnx.value_and_grad(lambda m: loss_fn(m, b)[0])(m)

    whole_loss, whole_grads = jit(loss_and_grads, model(0))(b)
    loss, grads = jit(loss_and_grads, model(16))(b)  # a 40-token window: 3 blocks
    assert float(loss) == pytest.approx(float(whole_loss), rel=1e-5)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(whole_grads), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("fields", "message"), [
    ({"attention_chunk": -1}, "attention_chunk=-1 must be >= 0"),
    ({"attention_chunk": 64, "attention_impl": "xla"}, "set one of them"),
])
def test_bad_attention_chunk_is_an_error(fields, message):
    with pytest.raises(ValueError, match=message):
        get_config("test", **fields)
