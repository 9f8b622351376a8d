"""model.layer_norm (every LayerNorm of the model): the outputs and gradients of the same
LayerNorm differentiated by JAX, float32 and bfloat16 outputs, float32 and bfloat16
parameters, first and second order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmt_jax.core.model import LAYER_NORM_EPSILON, layer_norm

# numbers and behaviour, not speed: XLA's optimisations off (conftest.fast_compiles)
pytestmark = pytest.mark.usefixtures("fast_compiles")


def reference(x, scale, bias, dtype):
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPSILON)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(dtype)


def inputs(param_dtype, shape=(2, 5, 16)):
    keys = jax.random.split(jax.random.key(0), 4)
    x = 3.0 * jax.random.normal(keys[0], shape) + 1.5  # off-centre, not unit scale
    scale = (1.0 + 0.5 * jax.random.normal(keys[1], shape[-1:])).astype(param_dtype)
    bias = (0.5 * jax.random.normal(keys[2], shape[-1:])).astype(param_dtype)
    w = jax.random.normal(keys[3], shape)  # a cotangent
    return x, scale, bias, w


@pytest.mark.parametrize("dtype,param_dtype,tol", [
    (jnp.float32, jnp.float32, 1e-5), (jnp.bfloat16, jnp.float32, 2e-2),
    (jnp.bfloat16, jnp.bfloat16, 2e-2)])
def test_outputs_and_gradients_match_jax_autodiff(dtype, param_dtype, tol):
    x, scale, bias, w = inputs(param_dtype)

    def loss(f):
        return lambda x, s, b: (f(x, s, b, dtype).astype(jnp.float32) * w).sum()

    got_y = layer_norm(x, scale, bias, dtype)
    assert got_y.dtype == dtype
    np.testing.assert_array_equal(np.asarray(got_y, np.float32),
                                  np.asarray(reference(x, scale, bias, dtype), np.float32))
    got = jax.grad(loss(layer_norm), argnums=(0, 1, 2))(x, scale, bias)
    want = jax.grad(loss(reference), argnums=(0, 1, 2))(x, scale, bias)
    for name, g, r in zip(("x", "scale", "bias"), got, want, strict=True):
        assert g.dtype == r.dtype, name
        size = float(np.abs(np.asarray(r, np.float32)).max())
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32),
                                   atol=tol * max(size, 1.0), rtol=tol, err_msg=name)


def test_the_gradient_of_x_sums_to_zero_over_the_normalised_axis():
    # LayerNorm's output does not change when x shifts by a constant along the last axis
    x, scale, bias, w = inputs(jnp.float32)
    dx = jax.grad(lambda x: (layer_norm(x, scale, bias, jnp.float32) * w).sum())(x)
    assert np.abs(np.asarray(dx)).max() > 1e-2
    np.testing.assert_allclose(np.asarray(dx).sum(-1), 0.0, atol=1e-5)


def test_second_order_gradients_match_jax_autodiff():
    # the written-out backward pass is made of JAX ops, so it differentiates again
    x, scale, bias, w = inputs(jnp.float32)

    def grad_norm(f):
        inner = jax.grad(lambda x: (f(x, scale, bias, jnp.float32) * w).sum())
        return lambda x: jnp.square(inner(x)).sum()

    np.testing.assert_allclose(np.asarray(jax.grad(grad_norm(layer_norm))(x)),
                               np.asarray(jax.grad(grad_norm(reference))(x)),
                               atol=1e-5, rtol=1e-4)
