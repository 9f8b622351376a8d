"""The RMT / RMT-R model: a GPT-2-like pre-LN decoder that reads segments through a memory.

Backbone: positions restarting at 0 in every segment (`config.positions`: GPT-2's learned
embeddings by default, or an ALiBi recency bias, or rotary queries and keys), pre-LN blocks
with causal self-attention through `jax.nn.dot_product_attention` and a GELU MLP of width
4d, a final LayerNorm, and an LM head tied to the token embedding: GPT-2's computation, so GPT-2
checkpoints load into it (`rmt_jax.pretrained`; `RMT.lm_logits` is then GPT-2's LM).

One segment's input is `[read memory (R); tokens (L); write memory (N)]`, R = N for RMT and
R = 2N (`[m; r]`) for RMT-R. The final-layer outputs *after* the final LayerNorm at the N
write positions become the next memory (the official code takes `hidden_states[-1]` of the
Hugging Face GPT-2, which is post-LN too).

Padding inside a segment needs no attention mask: a segment with `length` real tokens is
laid out as `[read; tokens[:length]; write; pad...]`, so the pads sit after every position
that matters and causal attention hides them; the write tokens get the positions they would
have in an unpadded segment of `length` tokens. The fused attention kernel therefore always
runs with `is_causal=True` and nothing else.

Dropout takes explicit keys (None = deterministic), so a key split per segment gives every
segment of a `scan` its own masks.

Dtypes: parameters are stored in `config.param_dtype` and cast to `config.dtype` at use;
LayerNorm statistics, attention-map softmax and logits are computed in float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from rmt_jax.core.config import ModelConfig

LAYER_NORM_EPSILON = 1e-5  # GPT-2's


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
        x = x.astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPSILON)
        return (y * self.scale[...].astype(jnp.float32) + self.bias[...]).astype(self.dtype)


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


def rotary(x: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotary position embedding of x [b, t, h, hd] at positions 0..t-1 (the two halves of
    each head are rotated as pairs)."""
    t, hd = x.shape[1], x.shape[-1]
    freq = base ** (-jnp.arange(0, hd // 2, dtype=jnp.float32) * 2.0 / hd)  # [hd/2]
    angle = jnp.arange(t, dtype=jnp.float32)[:, None] * freq[None, :]  # [t, hd/2]
    cos, sin = jnp.cos(angle)[None, :, None, :], jnp.sin(angle)[None, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).astype(x.dtype)


class CausalSelfAttention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, out_std: float):
        d, h, hd, pd = cfg.d_model, cfg.heads, cfg.head_dim, cfg.params_dtype
        self.qkv = _normal(rngs, (d, 3, h, hd), cfg.init_std, pd)
        self.qkv_bias = _zeros((3, h, hd), pd)
        self.out = _normal(rngs, (h, hd, d), out_std, pd)
        self.out_bias = _zeros((d,), pd)
        self.dtype = cfg.compute_dtype
        self.implementation = cfg.attention_impl
        self.positions = cfg.positions

    def __call__(self, x: jax.Array, return_weights: bool = False):
        """x [b, t, d] -> (y [b, t, d], weights [b, h, t, t] float32 or None)."""
        dt = self.dtype
        # [b, t, d] -> [b, t, 3, h, hd]
        qkv = jnp.einsum("btd,dkhe->btkhe", x, self.qkv[...].astype(dt))
        qkv = qkv + self.qkv_bias[...].astype(dt)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each [b, t, h, hd]
        if self.positions == "rope":
            q, k = rotary(q), rotary(k)
        t = x.shape[1]
        bias = alibi_bias(q.shape[2], t) if self.positions == "alibi" else None
        weights = None
        if return_weights:
            # [b, t, h, hd] x [b, s, h, hd] -> [b, h, t, s]
            logits = jnp.einsum("bthe,bshe->bhts", q, k).astype(jnp.float32)
            logits = logits / math.sqrt(q.shape[-1])
            if bias is not None:
                logits = logits + bias
            causal = jnp.tril(jnp.ones((t, t), bool))
            weights = jax.nn.softmax(jnp.where(causal, logits, -jnp.inf), axis=-1)
            # [b, h, t, s] x [b, s, h, hd] -> [b, t, h, hd]
            y = jnp.einsum("bhts,bshe->bthe", weights.astype(dt), v)
        else:
            y = jax.nn.dot_product_attention(
                q, k, v, bias=None if bias is None else bias.astype(dt), is_causal=True,
                implementation=self.implementation)
        # [b, t, h, hd] -> [b, t, d]
        y = jnp.einsum("bthe,hed->btd", y, self.out[...].astype(dt)) + self.out_bias[...].astype(dt)
        return y, weights


class Block(nnx.Module):
    """Pre-LN transformer block."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        out_std = cfg.init_std  # the output projections: GPT-2 scales them by 1/sqrt(2 layers)
        if cfg.scaled_residual_init:
            out_std /= math.sqrt(2 * cfg.layers)
        self.ln1 = LayerNorm(cfg)
        self.attn = CausalSelfAttention(cfg, rngs, out_std)
        self.ln2 = LayerNorm(cfg)
        self.mlp = Mlp(cfg, rngs, out_std)
        self.rate = cfg.dropout

    def __call__(self, x, key=None, return_weights=False):
        y, weights = self.attn(self.ln1(x), return_weights)
        x = x + dropout(y, self.rate, _fold(key, 0))
        x = x + dropout(self.mlp(self.ln2(x)), self.rate, _fold(key, 1))
        return x, weights


class MemoryRetrieval(nnx.Module):
    """RMT-R's read of past memories: single-head cross-attention, then an MLP, both residual.

    q = Wq LN(m), K = Wk LN(M), V = Wv LN(M) over the valid stored states M;
    r = m + Wo softmax(q K^T / sqrt(d)) V;  r = r + MLP(LN(r)).
    With no valid state (the first segment) the attention term is zero: r = m + MLP(LN(m)).

    A stored state never changes, so its keys and values are computed once, when it is
    written (`keys_values`), and the buffer holds them: a read costs O(T n d), not the
    O(T n d^2) of projecting every stored state again at every segment.
    """

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, pd = cfg.d_model, cfg.params_dtype
        self.ln_in = LayerNorm(cfg)
        self.wq = _normal(rngs, (d, d), cfg.init_std, pd)
        self.wk = _normal(rngs, (d, d), cfg.init_std, pd)
        self.wv = _normal(rngs, (d, d), cfg.init_std, pd)
        self.wo = _normal(rngs, (d, d), cfg.init_std, pd)
        self.ln_mlp = LayerNorm(cfg)
        self.mlp = Mlp(cfg, rngs, cfg.init_std)
        self.rate = cfg.retrieval_dropout
        self.dtype = cfg.compute_dtype

    def keys_values(self, states: jax.Array) -> jax.Array:
        """states [..., n, d] -> their keys and values [..., 2, n, d]."""
        dt = self.dtype
        x = self.ln_in(states)
        k = x @ self.wk[...].astype(dt)  # [..., n, d] -> [..., n, d]
        v = x @ self.wv[...].astype(dt)  # [..., n, d] -> [..., n, d]
        return jnp.stack([k, v], axis=-3)

    def __call__(self, m, kv, valid, key=None):
        """m [b, n, d], kv [b, T, 2, n, d] (from `keys_values`), valid [b, T] -> r [b, n, d]."""
        dt = self.dtype
        b, cap, _, n, d = kv.shape
        q = self.ln_in(m) @ self.wq[...].astype(dt)  # [b, n, d] -> [b, n, d]
        k = kv[:, :, 0].reshape(b, cap * n, d)  # [b, T*n, d]
        v = kv[:, :, 1].reshape(b, cap * n, d)  # [b, T*n, d]
        scores = jnp.einsum("bqd,bsd->bqs", q, k.astype(dt)).astype(jnp.float32) / math.sqrt(d)
        key_valid = jnp.repeat(valid, n, axis=1)[:, None, :]  # [b, 1, T*n]
        weights = jax.nn.softmax(jnp.where(key_valid, scores, -1e30), axis=-1)
        weights = jnp.where(key_valid, weights, 0.0)  # all-invalid rows become zero, not uniform
        weights = dropout(weights, self.rate, _fold(key, 0))
        attended = jnp.einsum("bqs,bsd->bqd", weights.astype(dt), v.astype(dt))  # [b, n, d]
        r = m + dropout(attended @ self.wo[...].astype(dt), self.rate, _fold(key, 1))
        return r + dropout(self.mlp(self.ln_mlp(r)), self.rate, _fold(key, 2))


class RMT(nnx.Module):
    """Recurrent Memory Transformer (RMT-R when `config.retrieval`).

    Holds parameters and per-segment computations; the recurrence over segments lives in
    `rmt_jax.core.recurrence`.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        cfg = config
        self.config = cfg
        pd = cfg.params_dtype
        self.wte = _normal(rngs, (cfg.vocab_size, cfg.d_model), cfg.init_std, pd)
        # GPT-2's learned positions; ALiBi and RoPE act inside the attention instead
        self.wpe = (_normal(rngs, (cfg.max_positions, cfg.d_model), cfg.init_std / 2, pd)
                    if cfg.positions == "learned" else None)
        self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.layers)])
        self.ln_f = LayerNorm(cfg)
        # The memory starts at the scale of the token embeddings (`rmt_jax.pretrained`
        # rescales it to a loaded embedding's std, as the official RMT code draws it).
        self.memory = _normal(rngs, (cfg.mem_tokens, cfg.d_model), cfg.init_std, pd)
        self.retrieval = MemoryRetrieval(cfg, rngs) if cfg.retrieval else None

    # -- pieces ---------------------------------------------------------------------------
    def embed(self, tokens: jax.Array) -> jax.Array:
        """[b, t] int -> [b, t, d] compute dtype."""
        return jnp.take(self.wte[...], tokens, axis=0).astype(self.config.compute_dtype)

    def transformer(self, x: jax.Array, key=None, return_attention: bool = False):
        """[b, t, d] input embeddings (without positions) -> ([b, t, d] after ln_f, maps).

        Positions 0..t-1 are added here. `maps` maps 'layer_i' to [b, h, t, t] weights for the
        layers in `config.attention_map_layers` when `return_attention`, else it is None.
        """
        cfg = self.config
        if self.wpe is not None:
            x = x + self.wpe[: x.shape[1]].astype(cfg.compute_dtype)
        x = dropout(x, cfg.dropout, _fold(key, cfg.layers))
        maps = {} if return_attention else None
        for i, block in enumerate(self.blocks):
            want = return_attention and i in cfg.attention_map_layers
            x, weights = block(x, _fold(key, i), want)
            if want:
                maps[f"layer_{i}"] = weights
        return self.ln_f(x), maps

    def logits(self, h: jax.Array) -> jax.Array:
        """[..., d] -> [..., vocab] float32 through the tied embedding."""
        dt = self.config.compute_dtype
        return (h.astype(dt) @ self.wte[...].astype(dt).T).astype(jnp.float32)

    def lm_logits(self, tokens: jax.Array) -> jax.Array:
        """The backbone alone as a language model: tokens [b, t] at positions 0..t-1, no
        memory -> logits [b, t, vocab] float32 (with GPT-2 weights: GPT-2's logits)."""
        h, _ = self.transformer(self.embed(tokens))
        return self.logits(h)

    def initial_memory(self, batch: int) -> jax.Array:
        """[b, n, d] in the compute dtype."""
        m = self.memory[...].astype(self.config.compute_dtype)
        return jnp.broadcast_to(m, (batch, *m.shape))

    def read_memory(self, m, buffer=None, valid=None, key=None) -> jax.Array:
        """The read tokens: m [b, n, d] for RMT, [m; retrieve(m)] [b, 2n, d] for RMT-R
        (buffer [b, T, 2, n, d]: keys and values of the stored memories)."""
        if self.retrieval is None:
            return m
        return jnp.concatenate([m, self.retrieval(m, buffer, valid, key)], axis=1)

    def segment(self, read, write, tokens, lengths, key=None, return_attention=False):
        """One segment -> (next memory [b, n, d], maps).

        read [b, R, d] and write [b, n, d] (the current memory, as in the official code) frame
        tokens [b, L]; `tokens[:, :lengths]` are real and the rest is ignored (lengths [b]).
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
        h, maps = self.transformer(jnp.concatenate([read, body], axis=1), key, return_attention)
        write_pos = r + ln + jnp.arange(n)[None, :]  # [b, n]
        memory = jnp.take_along_axis(h, write_pos[:, :, None], axis=1)  # [b, n, d]
        return memory, maps

    def answer_hidden(self, read, query, key=None) -> jax.Array:
        """The answer segment [read; query]: read [b, R, d], query [b, Q] -> [b, Q, d]."""
        r = read.shape[1]
        if r + query.shape[1] > self.config.max_positions:
            raise ValueError(
                f"the answer segment needs {r + query.shape[1]} positions ({r} memory + "
                f"{query.shape[1]} query tokens) but max_positions={self.config.max_positions}: "
                "shorten the question/answer or raise max_positions")
        h, _ = self.transformer(jnp.concatenate([read, self.embed(query)], axis=1), key)
        return h[:, r:]


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
