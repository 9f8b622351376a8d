"""model.causal_attention (the CPU default): jax.nn.dot_product_attention's outputs and
gradients, with learned, RoPE and ALiBi positions, float32 and bfloat16; and the RMT's
training step the same with attention_impl 'einsum' and 'xla'."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rmt_jax import RMT, get_config, loss_fn
from rmt_jax.core.model import alibi_bias, causal_attention

# numbers and behaviour, not speed: XLA's optimisations off (conftest.fast_compiles)
pytestmark = pytest.mark.usefixtures("fast_compiles")


def reference(q, k, v, alibi):
    bias = alibi_bias(q.shape[2], q.shape[1]).astype(q.dtype) if alibi else None
    return jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=True,
                                        implementation="xla")


def qkv(dtype, b=2, t=13, h=4, hd=8):
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v = (jax.random.normal(kk, (b, t, h, hd), jnp.float32).astype(dtype)
               for kk in keys[:3])
    w = jax.random.normal(keys[3], (b, t, h, hd), jnp.float32)  # a cotangent
    return q, k, v, w


@pytest.mark.parametrize("alibi", [False, True])
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)])
def test_outputs_and_gradients_match_jax_nn(alibi, dtype, tol):
    q, k, v, w = qkv(dtype)

    def loss(f):
        return lambda q, k, v: (f(q, k, v, alibi).astype(jnp.float32) * w).sum()

    np.testing.assert_allclose(np.asarray(causal_attention(q, k, v, alibi), np.float32),
                               np.asarray(reference(q, k, v, alibi), np.float32),
                               atol=tol, rtol=tol)
    got = jax.grad(loss(causal_attention), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(reference), argnums=(0, 1, 2))(q, k, v)
    for name, g, r in zip("qkv", got, want, strict=True):
        assert g.dtype == dtype, name
        scale = float(np.abs(np.asarray(r, np.float32)).max())
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32),
                                   atol=tol * max(scale, 1.0), rtol=tol, err_msg=name)


def test_a_later_key_gets_no_gradient_from_an_earlier_query():
    q, k, v, _ = qkv(jnp.float32)
    # the loss reads query 5 only: keys and values after it must get exactly zero gradient
    dk, dv = jax.grad(lambda k, v: causal_attention(q, k, v)[:, 5].sum(), argnums=(0, 1))(k, v)
    assert np.all(np.asarray(dk)[:, 6:] == 0) and np.all(np.asarray(dv)[:, 6:] == 0)
    assert np.abs(np.asarray(dk)[:, :5]).sum() > 0


@pytest.mark.parametrize("positions", ["learned", "rope", "alibi"])
def test_training_step_is_the_same_with_einsum_and_xla(positions):
    base = get_config("test", positions=positions)
    rng = np.random.default_rng(0)
    batch = dict(context=rng.integers(0, base.vocab_size, (2, 3 * base.segment_len)),
                 query=rng.integers(0, base.vocab_size, (2, 6)),
                 loss_mask=np.ones((2, 6), np.float32))

    def loss_and_grads(impl):
        model = RMT(base.replace(attention_impl=impl), rngs=nnx.Rngs(0))
        (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, batch)
        return float(loss), jax.tree.leaves(grads)

    loss_e, grads_e = loss_and_grads("einsum")
    loss_x, grads_x = loss_and_grads("xla")
    assert abs(loss_e - loss_x) < 1e-5
    for a, b in zip(grads_e, grads_x, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4)
