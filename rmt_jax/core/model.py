"""The RMT / RMT-R / ARMT model: a GPT-2-like pre-LN decoder that reads segments through a memory.

Backbone: positions restarting at 0 in every segment (`config.positions`: GPT-2's learned
embeddings by default, or an ALiBi recency bias, or rotary queries and keys), pre-LN blocks
with causal self-attention and a GELU MLP of width 4d, a final LayerNorm, and an LM head
tied to the token embedding: GPT-2's computation, so GPT-2 checkpoints load into it
(`rmt_jax.pretrained`; `RMT.lm_logits` is then GPT-2's LM).

One segment's input is `[read memory (R); tokens (L); write memory (N)]`, R = N for RMT and
R = 2N (`[m; r]`) for RMT-R. The final-layer outputs *after* the final LayerNorm at the N
write positions become the next memory (the official code takes `hidden_states[-1]` of the
Hugging Face GPT-2, which is post-LN too).

ARMT (`config.memory == 'armt'`) has no read tokens (R = 0) and writes the learned memory
embeddings every segment; its state is an `Associations` pair per layer (matrix A [d_key, d],
normaliser z [d_key], float32). Before block i every position h adds
`A φ(W_q h) / (z · φ(W_q h) + ε)` (φ = DPFP); after it, the block's outputs m at the write
positions are stored by the delta rule: k = φ(W_k m), v = W_v m - A k / (z · k + ε),
β = sigmoid(W_b m), A += Σ β k vᵀ, z += Σ γ k with γ = clip(1 - (z · k + ε) / |k|², 0, 1)
(no gradient through γ), as in `RodkinIvan/associative-recurrent-memory-transformer`.
W_v starts at zero, so a fresh ARMT reads nothing. With A = z = 0 the read is 0 and γ = 1:
the first segment needs no special case.

Padding inside a segment needs no attention mask: a segment with `length` real tokens is
laid out as `[read; tokens[:length]; write; pad...]`, so the pads sit after every position
that matters and causal attention hides them; the write tokens get the positions they would
have in an unpadded segment of `length` tokens. Attention is therefore always plain causal.
It runs through `jax.nn.dot_product_attention` (cuDNN's fused kernel on a GPU), or, on a CPU
(`config.attention_impl` None there, or 'einsum'), through `causal_attention`: the same
einsums with a hand-written backward pass, which XLA's CPU backend runs up to a fifth faster per
training step than the differentiated `jax.nn` path (results/benchmark_rmt_cpu.md). Every
LayerNorm's backward pass is written out too (`layer_norm`).

Dropout takes explicit keys (None = deterministic), so a key split per segment gives every
segment of a `scan` its own masks.

Dtypes: parameters are stored in `config.param_dtype` and cast to `config.dtype` at use;
LayerNorm statistics, attention-map softmax and logits are computed in float32.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rmt_jax.core.config import ARMT_NU, ModelConfig

LAYER_NORM_EPSILON = 1e-5  # GPT-2's
ASSOCIATIVE_EPSILON = 1e-5  # ARMT's, in the normaliser of a read and in gamma


class Associations(NamedTuple):
    """ARMT's state: one associative matrix and normaliser per layer (float32)."""
    matrix: jax.Array  # [B, layers, d_key, d]
    norm: jax.Array    # [B, layers, d_key]


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout; the identity when `key` is None or `rate` is 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def _fold(key: jax.Array | None, i: int) -> jax.Array | None:
    return None if key is None else jax.random.fold_in(key, i)


def _normal(rngs: nnx.Rngs, shape, std: float, dtype) -> nnx.Param:
    return nnx.Param(jax.random.normal(rngs.params(), shape, jnp.float32).astype(dtype) * std)


def _zeros(shape, dtype) -> nnx.Param:
    return nnx.Param(jnp.zeros(shape, dtype))


class LayerNorm(nnx.Module):
    """LayerNorm with float32 statistics, output in the compute dtype."""

    def __init__(self, cfg: ModelConfig):
        self.scale = nnx.Param(jnp.ones((cfg.d_model,), cfg.params_dtype))
        self.bias = _zeros((cfg.d_model,), cfg.params_dtype)
        self.dtype = cfg.compute_dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        return layer_norm(x.astype(jnp.float32), self.scale[...], self.bias[...], self.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, dtype) -> jax.Array:
    """LayerNorm of float32 x [..., d] over its last axis, output in `dtype`. Its backward pass
    is written out from the normalised input x̂ and 1/σ, the two residuals it keeps:
    g = dy · scale, dx = (g - mean(g) - x̂ · mean(g · x̂)) / σ, dscale = Σ dy · x̂, dbias = Σ dy.
    Differentiated by JAX instead, it kept more arrays per call, and in a scan's backward XLA's
    CPU backend fused the chain of them across layers into slow transposing loops: the
    written-out pass makes a CPU training step 5-30% faster, depending on the shape
    (results/benchmark_rmt_cpu.md)."""
    return _layer_norm_fwd(x, scale, bias, dtype)[0]


def _layer_norm_fwd(x, scale, bias, dtype):
    f32 = jnp.float32
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    inv_sigma = jax.lax.rsqrt(jnp.square(centred).mean(-1, keepdims=True) + LAYER_NORM_EPSILON)
    normalised = centred * inv_sigma
    y = (normalised * scale.astype(f32) + bias.astype(f32)).astype(dtype)
    return y, (normalised, inv_sigma, scale, bias)


def _layer_norm_bwd(dtype, residuals, dy):
    del dtype
    normalised, inv_sigma, scale, bias = residuals
    dy = dy.astype(jnp.float32)
    batch_axes = tuple(range(dy.ndim - 1))
    g = dy * scale.astype(jnp.float32)
    dx = inv_sigma * (g - g.mean(-1, keepdims=True)
                      - normalised * (g * normalised).mean(-1, keepdims=True))
    dscale = (dy * normalised).sum(batch_axes).astype(scale.dtype)
    return dx, dscale, dy.sum(batch_axes).astype(bias.dtype)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class Mlp(nnx.Module):
    """GELU MLP of width 4d."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, out_std: float):
        d, pd = cfg.d_model, cfg.params_dtype
        self.fc = _normal(rngs, (d, 4 * d), cfg.init_std, pd)
        self.fc_bias = _zeros((4 * d,), pd)
        self.proj = _normal(rngs, (4 * d, d), out_std, pd)
        self.proj_bias = _zeros((d,), pd)
        self.dtype = cfg.compute_dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        dt = self.dtype
        h = x @ self.fc[...].astype(dt) + self.fc_bias[...].astype(dt)  # [..., d] -> [..., 4d]
        h = jax.nn.gelu(h, approximate=True)
        # [..., 4d] -> [..., d]
        return h @ self.proj[...].astype(dt) + self.proj_bias[...].astype(dt)


def alibi_slopes(heads: int) -> jnp.ndarray:
    """ALiBi's per-head slopes: the geometric sequence 2^(-8/h), 2^(-16/h), ... [h]."""
    return 2.0 ** (-8.0 * jnp.arange(1, heads + 1, dtype=jnp.float32) / heads)


def alibi_bias(heads: int, t: int) -> jax.Array:
    """[1, h, t, t] float32: -slope_h * (i - j), the distance of key j behind query i (the
    keys after a query are masked by causality anyway)."""
    distance = (jnp.arange(t)[:, None] - jnp.arange(t)[None, :]).astype(jnp.float32)
    return -alibi_slopes(heads)[None, :, None, None] * jnp.maximum(distance, 0.0)[None, None]


def rotary(x: jax.Array, base: float = 10000.0, positions: jax.Array | None = None
           ) -> jax.Array:
    """Rotary position embedding of x [b, t, h, hd] at positions 0..t-1, or at `positions`
    [b, t] (the two halves of each head are rotated as pairs)."""
    t, hd = x.shape[1], x.shape[-1]
    freq = base ** (-jnp.arange(0, hd // 2, dtype=jnp.float32) * 2.0 / hd)  # [hd/2]
    pos = jnp.arange(t)[None] if positions is None else positions  # [1 or b, t]
    angle = pos.astype(jnp.float32)[..., None] * freq  # [1 or b, t, hd/2]
    cos, sin = jnp.cos(angle)[:, :, None, :], jnp.sin(angle)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).astype(x.dtype)


def attend(q, k, v, behind, slopes: jax.Array | None = None):
    """q [b, tq, h, hd] over k, v [b, s, h, hd]; behind (broadcast to [b, h, tq, s]): how far
    key s lies behind each query (negative: after it, masked); slopes [h]: ALiBi's, a bias of
    -slope * distance -> (y [b, tq, h, hd], weights [b, h, tq, s] float32)."""
    logits = jnp.einsum("bqhe,bshe->bhqs", q, k).astype(jnp.float32) / math.sqrt(q.shape[-1])
    if slopes is not None:
        logits = logits - slopes[:, None, None] * jnp.maximum(behind, 0)
    weights = jax.nn.softmax(jnp.where(behind >= 0, logits, -jnp.inf), axis=-1)
    return jnp.einsum("bhqs,bshe->bqhe", weights.astype(v.dtype), v), weights


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def causal_attention(q, k, v, alibi: bool = False) -> jax.Array:
    """Causal attention of q, k, v [b, t, h, hd] -> [b, t, h, hd] (`attend`'s arithmetic:
    float32 logits and softmax), with ALiBi's bias when `alibi`. Its backward pass is written
    out: dv = pᵀ dy, dp = dy vᵀ, ds = p (dp - rowsum(dy * y)) / sqrt(hd), dq = ds k,
    dk = dsᵀ q; the row sums come from dy * y ([b, t, h]) instead of p * dp ([b, h, t, t])."""
    return _causal_attention_fwd(q, k, v, alibi)[0]


def _causal_attention_fwd(q, k, v, alibi):
    t = q.shape[1]
    slopes = alibi_slopes(q.shape[2]) if alibi else None
    y, p = attend(q, k, v, jnp.arange(t)[:, None] - jnp.arange(k.shape[1])[None, :], slopes)
    return y, (q, k, v, p, y)


def _causal_attention_bwd(alibi, residuals, dy):
    del alibi  # the bias is a constant: no gradient
    q, k, v, p, y = residuals
    f32 = jnp.float32
    dv = jnp.einsum("bhqs,bqhe->bshe", p.astype(v.dtype), dy.astype(v.dtype))
    dp = jnp.einsum("bqhe,bshe->bhqs", dy, v, preferred_element_type=f32)
    rows = (dy.astype(f32) * y.astype(f32)).sum(-1).transpose(0, 2, 1)[..., None]  # [b,h,t,1]
    ds = (p * (dp - rows) / math.sqrt(q.shape[-1])).astype(q.dtype)
    dq = jnp.einsum("bhqs,bshe->bqhe", ds, k)
    dk = jnp.einsum("bhqs,bqhe->bshe", ds, q)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


causal_attention.defvjp(_causal_attention_fwd, _causal_attention_bwd)


def chunked_attention(q, k, v, chunk: int, slopes: jax.Array | None = None) -> jax.Array:
    """Causal attention of q, k, v [b, t, h, hd] -> [b, t, h, hd], `chunk` queries at a time
    (the last block padded): the weights of one block, [b, h, chunk, t], exist at once
    instead of [b, h, t, t], and the backward pass recomputes them. slopes [h]: ALiBi's."""
    b, t, h, hd = q.shape
    blocks = -(-t // chunk)
    padded = jnp.pad(q, ((0, 0), (0, blocks * chunk - t), (0, 0), (0, 0)))
    padded = padded.reshape(b, blocks, chunk, h, hd).swapaxes(0, 1)  # [n, b, chunk, h, hd]

    @jax.checkpoint
    def block(args):
        qi, start = args
        behind = (start + jnp.arange(chunk))[:, None] - jnp.arange(t)[None, :]  # [chunk, s]
        return attend(qi, k, v, behind, slopes)[0]

    y = jax.lax.map(block, (padded, jnp.arange(blocks) * chunk))  # [n, b, chunk, h, hd]
    return y.swapaxes(0, 1).reshape(b, blocks * chunk, h, hd)[:, :t]


class CausalSelfAttention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, out_std: float):
        d, h, hd, pd = cfg.d_model, cfg.heads, cfg.head_dim, cfg.params_dtype
        self.qkv = _normal(rngs, (d, 3, h, hd), cfg.init_std, pd)
        self.qkv_bias = _zeros((3, h, hd), pd)
        self.out = _normal(rngs, (h, hd, d), out_std, pd)
        self.out_bias = _zeros((d,), pd)
        self.dtype = cfg.compute_dtype
        self.implementation = cfg.attention_path
        self.positions = cfg.positions
        self.chunk = cfg.attention_chunk

    def _qkv(self, x: jax.Array, positions: jax.Array | None = None):
        """x [b, t, d] -> q, k, v [b, t, h, hd] (RoPE applied at 0..t-1 or `positions`)."""
        dt = self.dtype
        # [b, t, d] -> [b, t, 3, h, hd]
        qkv = jnp.einsum("btd,dkhe->btkhe", x, self.qkv[...].astype(dt))
        qkv = qkv + self.qkv_bias[...].astype(dt)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each [b, t, h, hd]
        if self.positions == "rope":
            q, k = rotary(q, positions=positions), rotary(k, positions=positions)
        return q, k, v

    def _project_out(self, y: jax.Array) -> jax.Array:
        # [b, t, h, hd] -> [b, t, d]
        dt = self.dtype
        return (jnp.einsum("bthe,hed->btd", y, self.out[...].astype(dt))
                + self.out_bias[...].astype(dt))

    def __call__(self, x: jax.Array, return_weights: bool = False):
        """x [b, t, d] -> (y [b, t, d], weights [b, h, t, t] float32 or None, (k, v) each
        [b, t, h, hd]: the keys and values a decoding step attends to)."""
        dt = self.dtype
        q, k, v = self._qkv(x)
        t = x.shape[1]
        slopes = alibi_slopes(q.shape[2]) if self.positions == "alibi" else None
        weights = None
        if return_weights:
            y, weights = attend(q, k, v, jnp.arange(t)[:, None] - jnp.arange(t)[None, :],
                                slopes)
        elif self.chunk and t > self.chunk:
            y = chunked_attention(q, k, v, self.chunk, slopes)
        elif self.implementation == "einsum":
            y = causal_attention(q, k, v, self.positions == "alibi")
        else:
            bias = None if slopes is None else alibi_bias(q.shape[2], t).astype(dt)
            y = jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=True,
                                             implementation=self.implementation)
        return self._project_out(y), weights, (k, v)

    def decode(self, x: jax.Array, pos: jax.Array, cache: tuple[jax.Array, jax.Array]):
        """One new position per row: x [b, 1, d] at positions pos [b] of a window whose keys
        and values are `cache` ([b, T, h, hd] each, from `__call__` over the window) ->
        (y [b, 1, d], the cache with this position's key and value). The query attends to
        the window's positions up to pos, as the full pass's causal mask lets it."""
        q, k, v = self._qkv(x, pos[:, None])
        rows = jnp.arange(x.shape[0])
        keys = cache[0].at[rows, pos].set(k[:, 0])
        values = cache[1].at[rows, pos].set(v[:, 0])
        behind = pos[:, None, None, None] - jnp.arange(keys.shape[1])  # [b, 1, 1, s]
        slopes = alibi_slopes(q.shape[2]) if self.positions == "alibi" else None
        y = attend(q, keys, values, behind, slopes)[0]  # [b, 1, h, hd]
        return self._project_out(y), (keys, values)


class Canon(nnx.Module):
    """A Canon layer (`config.canon_kernel` taps): x + a causal depthwise convolution of x over
    the positions of a window, tap j weighing the position j before (zeros before the first).
    The taps start at zero, so a fresh layer passes x through unchanged."""

    def __init__(self, cfg: ModelConfig):
        self.weight = _zeros((cfg.canon_kernel, cfg.d_model), cfg.params_dtype)  # [K, d]

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [b, t, d] -> [b, t, d]."""
        w = self.weight[...].astype(x.dtype)
        taps, t = w.shape[0], x.shape[1]
        padded = jnp.pad(x, ((0, 0), (taps - 1, 0), (0, 0)))
        out = x
        for j in range(taps):
            out = out + w[j] * padded[:, taps - 1 - j: taps - 1 - j + t]
        return out

    def decode(self, x: jax.Array, pos: jax.Array, window: jax.Array):
        """One new position per row: x [b, 1, d] at positions pos [b] of a window whose
        inputs are `window` [b, T, d] (from `__call__`'s input over it) -> (out [b, 1, d], the
        window with x at pos)."""
        rows = jnp.arange(x.shape[0])
        window = window.at[rows, pos].set(x[:, 0])
        w = self.weight[...].astype(x.dtype)
        back = pos[:, None] - jnp.arange(w.shape[0])[None, :]  # [b, K] the positions read
        taps = jnp.take_along_axis(window, jnp.maximum(back, 0)[:, :, None], axis=1)
        taps = jnp.where((back >= 0)[:, :, None], taps, 0)  # [b, K, d]
        return x + jnp.einsum("bkd,kd->bd", taps, w)[:, None], window


class Block(nnx.Module):
    """Pre-LN transformer block (with `config.canon_kernel`: a Canon layer on the input of the
    attention and of the MLP, after their LayerNorms)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        out_std = cfg.init_std  # the output projections: GPT-2 scales them by 1/sqrt(2 layers)
        if cfg.scaled_residual_init:
            out_std /= math.sqrt(2 * cfg.layers)
        self.ln1 = LayerNorm(cfg)
        self.attn = CausalSelfAttention(cfg, rngs, out_std)
        self.ln2 = LayerNorm(cfg)
        self.mlp = Mlp(cfg, rngs, out_std)
        self.canon_attn = Canon(cfg) if cfg.canon_kernel else None
        self.canon_mlp = Canon(cfg) if cfg.canon_kernel else None
        self.rate = cfg.dropout

    def __call__(self, x, key=None, return_weights=False):
        """-> (x, attention weights or None, what `decode` needs of this window: the
        attention's keys and values, and with Canon layers their inputs)."""
        a = self.ln1(x)
        y, weights, kv = self.attn(a if self.canon_attn is None else self.canon_attn(a),
                                   return_weights)
        x = x + dropout(y, self.rate, _fold(key, 0))
        c = self.ln2(x)
        x = x + dropout(self.mlp(c if self.canon_mlp is None else self.canon_mlp(c)),
                        self.rate, _fold(key, 1))
        return x, weights, (kv if self.canon_attn is None else (*kv, a, c))

    def decode(self, x, pos, cache):
        """One new position per row (CausalSelfAttention.decode), no dropout."""
        a = self.ln1(x)
        if self.canon_attn is not None:
            a, a_window = self.canon_attn.decode(a, pos, cache[2])
        y, kv = self.attn.decode(a, pos, cache[:2])
        x = x + y
        c = self.ln2(x)
        if self.canon_mlp is None:
            return x + self.mlp(c), kv
        c, c_window = self.canon_mlp.decode(c, pos, cache[3])
        return x + self.mlp(c), (*kv, a_window, c_window)


class MemoryRetrieval(nnx.Module):
    """RMT-R's read of past memories: single-head cross-attention, then an MLP, both residual.

    q = Wq LN_q(m) + b_q, K = Wk LN_kv(M) + b_k, V = Wv LN_kv(M) + b_v over the valid stored
    states M; r = m + Wo softmax(q K^T / sqrt(d)) V + b_o;  r = r + MLP(LN(r)): the official
    code's block (`config.retrieval_kind == 'official'`). 'shared_norm' uses one LayerNorm for
    m and M and no biases. A row with no valid state (the first segment) reads the learned
    2N rows instead (`RMT.read_memory`) in the official block; r = m + MLP(LN(m)) in
    'shared_norm'.

    A stored state never changes, so its keys and values are computed once, when it is
    written (`keys_values`), and the buffer holds them: a read costs O(T n d), not the
    O(T n d^2) of projecting every stored state again at every segment.
    """

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, pd = cfg.d_model, cfg.params_dtype
        official = cfg.retrieval_kind == "official"
        self.ln_in = LayerNorm(cfg)  # the stored states' (and, in 'shared_norm', the query's)
        self.ln_q = LayerNorm(cfg) if official else None
        self.wq = _normal(rngs, (d, d), cfg.init_std, pd)
        self.wk = _normal(rngs, (d, d), cfg.init_std, pd)
        self.wv = _normal(rngs, (d, d), cfg.init_std, pd)
        self.wo = _normal(rngs, (d, d), cfg.init_std, pd)
        # q, k, v and o biases [4, d] (the official block's nn.Linear defaults)
        self.biases = _zeros((4, d), pd) if official else None
        self.ln_mlp = LayerNorm(cfg)
        self.mlp = Mlp(cfg, rngs, cfg.init_std)
        self.rate = cfg.retrieval_rate
        self.dtype = cfg.compute_dtype

    def _bias(self, i: int):
        return 0.0 if self.biases is None else self.biases[i].astype(self.dtype)

    def keys_values(self, states: jax.Array) -> jax.Array:
        """states [..., n, d] -> their keys and values [..., 2, n, d]."""
        dt = self.dtype
        x = self.ln_in(states)
        k = x @ self.wk[...].astype(dt) + self._bias(1)  # [..., n, d] -> [..., n, d]
        v = x @ self.wv[...].astype(dt) + self._bias(2)  # [..., n, d] -> [..., n, d]
        return jnp.stack([k, v], axis=-3)

    def __call__(self, m, kv, valid, key=None):
        """m [b, n, d], kv [b, T, 2, n, d] (from `keys_values`), valid [b, T] -> r [b, n, d]."""
        dt = self.dtype
        b, cap, _, n, d = kv.shape
        ln_q = self.ln_q or self.ln_in
        q = ln_q(m) @ self.wq[...].astype(dt) + self._bias(0)  # [b, n, d] -> [b, n, d]
        k = kv[:, :, 0].reshape(b, cap * n, d)  # [b, T*n, d]
        v = kv[:, :, 1].reshape(b, cap * n, d)  # [b, T*n, d]
        scores = jnp.einsum("bqd,bsd->bqs", q, k.astype(dt)).astype(jnp.float32) / math.sqrt(d)
        key_valid = jnp.repeat(valid, n, axis=1)[:, None, :]  # [b, 1, T*n]
        weights = jax.nn.softmax(jnp.where(key_valid, scores, -1e30), axis=-1)
        weights = jnp.where(key_valid, weights, 0.0)  # all-invalid rows become zero, not uniform
        weights = dropout(weights, self.rate, _fold(key, 0))
        attended = jnp.einsum("bqs,bsd->bqd", weights.astype(dt), v.astype(dt))  # [b, n, d]
        out = attended @ self.wo[...].astype(dt) + self._bias(3)
        r = m + dropout(out, self.rate, _fold(key, 1))
        return r + dropout(self.mlp(self.ln_mlp(r)), self.rate, _fold(key, 2))


def dpfp(x: jax.Array, nu: int = ARMT_NU) -> jax.Array:
    """Deterministic parameter-free projection (Schlag et al. 2021): [..., k] -> [..., 2 nu k]
    non-negative features: [relu(x); relu(-x)] times itself rolled by 1..nu."""
    x = jnp.concatenate([jax.nn.relu(x), jax.nn.relu(-x)], axis=-1)
    rolled = jnp.concatenate([jnp.roll(x, j, axis=-1) for j in range(1, nu + 1)], axis=-1)
    return jnp.tile(x, nu) * rolled


class AssociativeMemory(nnx.Module):
    """One layer's associative read and delta-rule write (ARMT); the matrices are the state,
    passed in and returned, in float32."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, pd = cfg.d_model, cfg.params_dtype
        self.wq = _normal(rngs, (d, cfg.d_mem), cfg.init_std, pd)
        self.wk = _normal(rngs, (d, cfg.d_mem), cfg.init_std, pd)
        self.wv = _zeros((d, d), pd)  # a fresh ARMT reads nothing: the backbone as it is
        self.wb = _normal(rngs, (d,), cfg.init_std, pd)
        self.wb_bias = _zeros((), pd)

    def _features(self, x: jax.Array, w: nnx.Param) -> jax.Array:
        return dpfp(x.astype(jnp.float32) @ w[...].astype(jnp.float32))  # [..., d] -> [..., dk]

    def read(self, matrix, norm, h: jax.Array) -> jax.Array:
        """h [b, t, d], matrix [b, dk, d], norm [b, dk] -> what the memory returns [b, t, d]."""
        q = self._features(h, self.wq)  # [b, t, dk]
        num = jnp.einsum("btk,bkd->btd", q, matrix)
        den = jnp.einsum("btk,bk->bt", q, norm)[..., None] + ASSOCIATIVE_EPSILON
        return (num / den).astype(h.dtype)

    def write(self, matrix, norm, m: jax.Array):
        """Stores the write outputs m [b, n, d] -> (matrix, norm) updated."""
        k = self._features(m, self.wk)  # [b, n, dk]
        m32 = m.astype(jnp.float32)
        den = jnp.einsum("bnk,bk->bn", k, norm)[..., None] + ASSOCIATIVE_EPSILON  # [b, n, 1]
        previous = jnp.einsum("bnk,bkd->bnd", k, matrix) / den
        value = m32 @ self.wv[...].astype(jnp.float32) - previous  # [b, n, d]: the new part
        beta = jax.nn.sigmoid(m32 @ self.wb[...].astype(jnp.float32)
                              + self.wb_bias[...].astype(jnp.float32))  # [b, n]
        gamma = jax.lax.stop_gradient(jnp.clip(
            1.0 - den / (jnp.square(k).sum(-1, keepdims=True) + ASSOCIATIVE_EPSILON), 0.0, 1.0))
        matrix = matrix + jnp.einsum("bnk,bnd,bn->bkd", k, value, beta)
        return matrix, norm + (gamma * k).sum(1)


class RMT(nnx.Module):
    """Recurrent Memory Transformer: RMT, RMT-R, ARMT or no memory, as `config.memory` says.

    Holds parameters and per-segment computations; the recurrence over segments lives in
    `rmt_jax.core.recurrence`.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        cfg = config
        self.config = cfg
        pd = cfg.params_dtype
        self.wte = _normal(rngs, (cfg.vocab_size, cfg.d_model), cfg.init_std, pd)
        # [vocab, d]: the output head when it is not the token embedding (tied_head=False)
        self.lm_head = (None if cfg.tied_head
                        else _normal(rngs, (cfg.vocab_size, cfg.d_model), cfg.init_std, pd))
        # GPT-2's learned positions; ALiBi and RoPE act inside the attention instead
        # (write_positions='own': N more rows, the write tokens' own)
        self.wpe = (_normal(rngs, (cfg.max_positions + cfg.own_write_rows, cfg.d_model),
                            cfg.init_std / 2, pd)
                    if cfg.positions == "learned" else None)
        self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.layers)])
        self.ln_f = LayerNorm(cfg)
        # The memory starts at the scale of the token embeddings (`rmt_jax.pretrained`
        # rescales it to a loaded embedding's std, as the official RMT code draws it).
        # [N, d]; [2N, d] for the official RMT-R, whose first read is all 2N rows
        self.memory = (_normal(rngs, (cfg.learned_read_rows, cfg.d_model), cfg.init_std, pd)
                       if cfg.mem_tokens else None)
        self.retrieval = MemoryRetrieval(cfg, rngs) if cfg.retrieval else None
        self.associative = (nnx.List([AssociativeMemory(cfg, rngs) for _ in range(cfg.layers)])
                            if cfg.memory == "armt" else None)

    # -- pieces ---------------------------------------------------------------------------
    def embed(self, tokens: jax.Array) -> jax.Array:
        """[b, t] int -> [b, t, d] compute dtype."""
        return jnp.take(self.wte[...], tokens, axis=0).astype(self.config.compute_dtype)

    def transformer(self, x: jax.Array, key=None, return_attention: bool = False,
                    assoc: Associations | None = None, write_pos: jax.Array | None = None):
        """[b, t, d] input embeddings (without positions) -> ([b, t, d] after ln_f, maps,
        associations).

        Positions 0..t-1 are added here. `maps` maps 'layer_i' to [b, h, t, t] weights for the
        layers in `config.attention_map_layers` when `return_attention`, else it is None.
        ARMT: every block first reads `assoc`; with `write_pos` [b, n] the blocks' outputs
        there are written, and the updated associations returned (else `assoc` as given).
        """
        h, maps, assoc, _ = self._blocks(x, key, return_attention, assoc, write_pos)
        return h, maps, assoc

    def _blocks(self, x, key, return_attention, assoc, write_pos):
        """`transformer`, and every layer's keys and values (unused ones cost nothing under
        jit)."""
        cfg = self.config
        if self.wpe is not None and cfg.own_write_rows and write_pos is not None:
            # the write tokens at their own rows, max_positions + j; the rest at 0..t-1
            b, t = x.shape[:2]
            pos = jnp.broadcast_to(jnp.arange(t), (b, t))
            pos = pos.at[jnp.arange(b)[:, None], write_pos].set(
                cfg.max_positions + jnp.arange(write_pos.shape[1]))
            x = x + jnp.take(self.wpe[...], pos, axis=0).astype(cfg.compute_dtype)
        elif self.wpe is not None:
            x = x + self.wpe[: x.shape[1]].astype(cfg.compute_dtype)
        x = dropout(x, cfg.dropout, _fold(key, cfg.layers))
        maps = {} if return_attention else None
        matrices, norms, caches = [], [], []
        for i, block in enumerate(self.blocks):
            if assoc is not None:
                x = x + self.associative[i].read(assoc.matrix[:, i], assoc.norm[:, i], x)
            want = return_attention and i in cfg.attention_map_layers
            x, weights, kv = block(x, _fold(key, i), want)
            caches.append(kv)
            if want:
                maps[f"layer_{i}"] = weights
            if assoc is not None and write_pos is not None:
                m = jnp.take_along_axis(x, write_pos[:, :, None], axis=1)  # [b, n, d]
                matrix, norm = self.associative[i].write(assoc.matrix[:, i], assoc.norm[:, i], m)
                matrices.append(matrix)
                norms.append(norm)
        if matrices:
            assoc = Associations(jnp.stack(matrices, 1), jnp.stack(norms, 1))
        return self.ln_f(x), maps, assoc, caches

    def logits(self, h: jax.Array) -> jax.Array:
        """[..., d] -> [..., vocab] float32 through the output head (the token embedding
        unless `tied_head=False`)."""
        dt = self.config.compute_dtype
        head = self.wte if self.lm_head is None else self.lm_head
        return (h.astype(dt) @ head[...].astype(dt).T).astype(jnp.float32)

    def lm_logits(self, tokens: jax.Array) -> jax.Array:
        """The backbone alone as a language model: tokens [b, t] at positions 0..t-1, no
        memory -> logits [b, t, vocab] float32 (with GPT-2 weights: GPT-2's logits)."""
        h, _, _ = self.transformer(self.embed(tokens))
        return self.logits(h)

    def initial_memory(self, batch: int) -> jax.Array:
        """[b, n, d] in the compute dtype ([b, 0, d] without memory)."""
        if self.memory is None:
            return jnp.zeros((batch, 0, self.config.d_model), self.config.compute_dtype)
        m = self.memory[: self.config.mem_tokens].astype(self.config.compute_dtype)
        return jnp.broadcast_to(m, (batch, *m.shape))

    def initial_associations(self, batch: int) -> Associations | None:
        """ARMT's empty associations for `batch` samples (None for the other memories)."""
        if self.associative is None:
            return None
        cfg = self.config
        return Associations(jnp.zeros((batch, cfg.layers, cfg.d_key, cfg.d_model), jnp.float32),
                            jnp.zeros((batch, cfg.layers, cfg.d_key), jnp.float32))

    def read_memory(self, m, buffer=None, valid=None, key=None) -> jax.Array:
        """The read tokens: m [b, n, d] for RMT, [m; retrieve(m)] [b, 2n, d] for RMT-R
        (buffer [b, T, 2, n, d]: keys and values of the stored memories), none [b, 0, d] for
        ARMT (it reads inside every layer) and without memory."""
        cfg = self.config
        if cfg.read_tokens == 0:
            return m[:, :0]
        if self.retrieval is None:
            return m
        read = jnp.concatenate([m, self.retrieval(m, buffer, valid, key)], axis=1)
        if cfg.learned_read_rows == cfg.read_tokens:  # official: nothing stored, learned rows
            learned = self.memory[...].astype(read.dtype)[None]
            read = jnp.where(valid.any(axis=1)[:, None, None], read, learned)
        return read

    def segment(self, read, write, tokens, lengths, key=None, return_attention=False,
                assoc: Associations | None = None):
        """One segment -> (next memory [b, n, d], maps, associations).

        read [b, R, d] and write [b, n, d] (the current memory, as in the official code) frame
        tokens [b, L]; `tokens[:, :lengths]` are real and the rest is ignored (lengths [b]).
        ARMT (`assoc` given): every layer reads `assoc` and writes its outputs at the write
        positions into the associations returned.
        """
        n = self.config.mem_tokens
        seg_len = tokens.shape[1]
        r = read.shape[1]
        emb = self.embed(tokens)  # [b, L, d]
        src = jnp.concatenate([emb, write], axis=1)  # [b, L + n, d]
        p = jnp.arange(seg_len + n)[None, :]
        ln = lengths[:, None]
        # real tokens, then the n write slots, then the pads (positions >= length + n)
        idx = jnp.where(p < ln, p, jnp.where(p < ln + n, seg_len + p - ln, p - n))
        body = jnp.take_along_axis(src, idx[:, :, None], axis=1)  # [b, L + n, d]
        write_pos = r + ln + jnp.arange(n)[None, :]  # [b, n]
        h, maps, assoc = self.transformer(jnp.concatenate([read, body], axis=1), key,
                                          return_attention, assoc, write_pos)
        memory = jnp.take_along_axis(h, write_pos[:, :, None], axis=1)  # [b, n, d]
        return memory, maps, assoc

    def _answer_window(self, read, query) -> jax.Array:
        r = read.shape[1]
        if r + query.shape[1] > self.config.max_positions:
            raise ValueError(
                f"the answer segment needs {r + query.shape[1]} positions ({r} memory + "
                f"{query.shape[1]} query tokens) but max_positions={self.config.max_positions}: "
                "shorten the question/answer or raise max_positions")
        return jnp.concatenate([read, self.embed(query)], axis=1)

    def answer_hidden(self, read, query, key=None,
                      assoc: Associations | None = None) -> jax.Array:
        """The answer segment [read; query]: read [b, R, d], query [b, Q] -> [b, Q, d]
        (ARMT: every layer reads `assoc`; nothing is written)."""
        h, _, _ = self.transformer(self._answer_window(read, query), key, assoc=assoc)
        return h[:, read.shape[1]:]

    def answer_prefill(self, read, query, assoc: Associations | None = None):
        """`answer_hidden` without dropout, and the keys and values of every layer over the
        window [read; query] (a list of (k, v), each [b, R + Q, h, hd]) for `answer_decode`."""
        h, _, _, caches = self._blocks(self._answer_window(read, query), None, False, assoc,
                                       None)
        return h[:, read.shape[1]:], caches

    def answer_decode(self, tokens: jax.Array, pos: jax.Array, caches,
                      assoc: Associations | None = None):
        """A token per row, tokens [b], placed at window position pos [b] (the memory's read
        rows count) of the window `answer_prefill` ran over -> (its hidden state after ln_f
        [b, d], the caches updated). The hidden state equals the full pass's over the window
        with the token in place, up to rounding (the positions after pos are masked)."""
        cfg = self.config
        x = self.embed(tokens[:, None])  # [b, 1, d]
        if self.wpe is not None:
            x = x + jnp.take(self.wpe[...], pos, axis=0)[:, None].astype(cfg.compute_dtype)
        updated = []
        for i, block in enumerate(self.blocks):
            if assoc is not None:
                x = x + self.associative[i].read(assoc.matrix[:, i], assoc.norm[:, i], x)
            x, cache = block.decode(x, pos, caches[i])
            updated.append(cache)
        return self.ln_f(x)[:, 0], updated


def count_params(model: nnx.Module, *, exclude_embeddings: bool = False) -> int:
    """Number of parameters; `exclude_embeddings` drops token/position embeddings and memory."""
    params = nnx.state(model, nnx.Param)
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        names = {str(getattr(p, "key", getattr(p, "name", p))) for p in path}
        if exclude_embeddings and names & {"wte", "wpe", "memory"}:
            continue
        total += leaf.size
    return total
