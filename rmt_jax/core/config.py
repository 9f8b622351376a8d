"""Typed configuration of the RMT / RMT-R model, with named presets.

`ModelConfig` validates itself on construction: sizes that disagree raise a `ValueError`
that names the problem and the fix. `PRESETS` is the project's one table of model sizes:
the trainer's configs (`configs/rmt_babilong.py:SIZE,...`) and the benchmarks
(`launch.benchmark_rmt --preset=SIZE`) both read it. The trainer takes the vocabulary from
its tokenizer; the presets' own vocabulary serves the model alone (tests, benchmarks).

  test        2 layers, d 32, 2 heads, vocab 64, segments of 8, 4 memory tokens (unit tests)
  smoke       1 layer, d 32, 2 heads, vocab 64, segments of 8, 2 memory tokens (training runs
              of seconds: the trainer's tests)
  quick       2 layers, d 64, 2 heads, GPT-2 vocabulary, segments of 32, 4 memory tokens
              (the CPU quickstart)
  tiny        2 layers, d 128, 4 heads, GPT-2 vocabulary, segments of 128, 8 memory tokens
  small       4 layers, d 256, 4 heads, GPT-2 vocabulary, segments of 128, 8 memory tokens
  gpt2_small  GPT-2 small (12 layers, d 768, 12 heads, 50257 tokens), segments of 512, 16 memory

Learned positions: a segment of L tokens needs R + L + N of them (R read, N written memory
tokens); the presets hold 2L + 4N (room for RMT-R's 2N read tokens and a question segment),
GPT-2's 1024 for gpt2_small.

`get_config("tiny", memory="armt", d_mem=32)` returns a preset with fields replaced.

Memory variants (`memory`), all through one `segment_step` (rmt_jax.core.recurrence):
  rmt   RMT (Bulatov et al. 2022): N memory vectors read at the start of a segment and
        written at its end; the written outputs are the next segment's memory.
  rmt_r RMT-R (Kuratov et al. 2024): RMT that also reads `retrieve(m, past memories)` over a
        buffer of every memory written so far (2N read tokens).
  armt  ARMT (Rodkin et al. 2024): every layer keeps an associative matrix [d_key, d] and a
        normaliser [d_key] (d_key = 2 * ARMT_NU * d_mem, DPFP features); each position adds
        its read before the layer, the layer's outputs at N write tokens (the learned
        memory embeddings, the same every segment) are written after it by the delta rule.
        No read tokens; the state is constant in size.
  none  no memory: the backbone alone over the last `max_positions` tokens in one window (the
        full-attention baseline; 'in_context' answers only).

Write tokens' positions (`write_positions`, learned positions only): 'follow' gives them the
positions after the segment's tokens; 'own' gives the N write tokens N learned positions of
their own, rows max_positions..max_positions+N-1 of the position table, the same in every
segment whatever its length (the ARMT reference's `wrap_pos`, its default with GPT-2).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

REMAT_POLICIES = ("none", "full", "dots_saveable", "nothing_saveable", "everything_saveable",
                  "dots_with_no_batch_dims_saveable", "checkpoint_dots")
DTYPES = {"float32": jnp.float32, "fp32": jnp.float32, "bfloat16": jnp.bfloat16,
          "bf16": jnp.bfloat16}
ATTENTION_IMPLS = (None, "einsum", "xla", "cudnn")
# Where the question and answer go (rmt_jax.core.answer): 'in_context' appends them to the context
# (the official BABILong fine-tuning), 'separate' reads them in an extra answer segment.
ANSWER_MODES = ("in_context", "separate")
# How a segment's tokens know their positions (rmt_jax.core.model): 'learned' adds GPT-2's learned
# position embeddings; 'alibi' adds a per-head linear recency bias to the attention logits
# (Press et al. 2022); 'rope' rotates queries and keys (Su et al. 2021). Positions restart
# at 0 in every segment in all three.
POSITIONS = ("learned", "alibi", "rope")
MEMORIES = ("rmt", "rmt_r", "armt", "none")
WRITE_POSITIONS = ("follow", "own")
ARMT_NU = 3  # DPFP's nu in the published ARMT: d_key = 2 * nu * d_mem
DEFAULT_RETRIEVAL_DROPOUT = 0.1  # RMT-R's, when retrieval_dropout is None
# RMT-R's own fields: None (unset) for every other memory
RETRIEVAL_FIELDS = ("retrieval_dropout", "retrieval_variant")
# RMT-R's retrieval block (rmt_jax.core.model.MemoryRetrieval): 'official' as the published code
# (branch babilong_retr): LayerNorms of its own for the query and for the stored states,
# biased projections, and 2N learned read rows in a segment with nothing stored yet;
# 'shared_norm': one LayerNorm for both, no biases, and r = m + MLP(LN(m)) with nothing stored.
RETRIEVAL_VARIANTS = ("official", "shared_norm")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    layers: int = 2                  # transformer blocks
    d_model: int = 32                # residual width
    heads: int = 2                   # attention heads; d_model % heads == 0
    vocab_size: int = 64             # token vocabulary (LM head is tied to the embedding)
    segment_len: int = 8             # context tokens per segment (L)
    mem_tokens: int = 4              # memory vectors (N)
    max_positions: int = 64          # learned positions; each segment restarts them at 0
    param_dtype: str = "float32"     # storage dtype of parameters: float32 | bfloat16
    dtype: str = "float32"           # compute dtype of activations: float32 | bfloat16
    memory: str = "rmt"              # 'rmt' | 'rmt_r' | 'armt' | 'none' (see the module docstring)
    d_mem: int = 0                   # ARMT's key projection width (0 = not ARMT); published: 64
    dropout: float = 0.0             # backbone dropout (embeddings, attention out, MLP out)
    retrieval_dropout: float | None = None  # dropout in RMT-R's retrieval block (None = 0.1)
    retrieval_variant: str | None = None  # RMT-R: 'official' | 'shared_norm' (None = official)
    remat_policy: str = "none"       # 'none', 'full' (save nothing), or a checkpoint_policies name
    scan_unroll: int = 1             # segments per iteration of the scan's loop (lax.scan unroll)
    # back-propagate through the last k segments of a scan, the earlier ones forward only
    # (rmt_jax.core.recurrence); None = all
    bptt_segments: int | None = None
    attention_map_layers: tuple[int, ...] = ()  # layers whose attention weights are returned
    # 'einsum' (model.causal_attention, hand-written backward), or jax.nn.dot_product_attention's
    # 'xla' | 'cudnn'; None: 'einsum' on a CPU backend, else what jax.nn picks
    attention_impl: str | None = None
    # Queries per block when a window is longer (0: one block). XLA's attention holds the
    # [b, h, t, t] weights of a window at once (17.8 GB at 4,096 tokens, batch 8, on a CPU);
    # blocks hold [b, h, chunk, t] (recomputed in the backward pass). Not with attention_impl.
    attention_chunk: int = 0
    answer_mode: str = "separate"    # 'in_context' (question in the last segment) | 'separate'
    positions: str = "learned"       # 'learned' (GPT-2) | 'alibi' | 'rope'
    write_positions: str = "follow"  # 'follow' | 'own' (learned rows of their own; see above)
    # Std of fresh weight matrices and embeddings (output projections / sqrt(2 layers), learned
    # positions / 2). 0.02 is GPT-2's; from scratch at small width it leaves the attention
    # logits near zero and training stalls at qa1's last-room shortcut, 1/sqrt(d_model) does not
    # (results/ablation_qa1_cpu/README.md).
    init_std: float = 0.02
    # GPT-2's init_std / sqrt(2 layers) for the output projections of attention and MLP; False
    # draws them at init_std like every other matrix (with 1/sqrt(d) and one memory token, the
    # from-scratch d-64 backbone then leaves qa1's shortcut; results/ablation_qa1_cpu/README.md)
    scaled_residual_init: bool = True
    # The output head is the token embedding (GPT-2's tie); False gives it its own [vocab, d]
    # matrix, so that tokens never answered (qa1's names) get no gradient from the softmax
    tied_head: bool = True
    # Canon layers (Allen-Zhu 2025, "Physics of Language Models: Part 4.1"): a causal depthwise
    # convolution of this many taps over a segment's positions, added back (h + conv(h)) to
    # the input of every attention and every MLP, so that each position sees the few tokens
    # before it without spending attention on them (a fact's location token, its person's
    # name). Its weights start at zero: a fresh model, or GPT-2's weights, compute what the
    # backbone computes without it. 0: off.
    canon_kernel: int = 0

    def __post_init__(self):
        for name in ("layers", "d_model", "heads", "vocab_size", "segment_len", "max_positions"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        if self.memory not in MEMORIES:
            raise ValueError(f"unknown memory {self.memory!r}: expected one of {MEMORIES}")
        if self.memory == "none" and self.mem_tokens:
            raise ValueError(f"memory='none' has no memory tokens but mem_tokens="
                             f"{self.mem_tokens}: set mem_tokens=0")
        if self.memory != "none" and self.mem_tokens <= 0:
            raise ValueError(f"mem_tokens={self.mem_tokens} must be >= 1: {self.memory} needs "
                             "at least one memory vector (memory='none' for the backbone alone)")
        if self.memory == "armt" and not 0 < self.d_mem <= self.d_model:
            raise ValueError(f"ARMT's d_mem={self.d_mem} must lie in 1..d_model={self.d_model}: "
                             "its keys are a projection of the residual stream (the published "
                             "ARMT uses d_mem=64 with d_model=768)")
        if self.memory == "none" and self.answer_mode != "in_context":
            raise ValueError("memory='none' reads the question in the window of the context: "
                             "set answer_mode='in_context' (a separate answer segment would see "
                             "no context at all)")
        if self.memory != "armt" and self.d_mem:
            raise ValueError(f"d_mem={self.d_mem} is ARMT's key width but memory="
                             f"{self.memory!r}: set memory='armt' or d_mem=0")
        for name in RETRIEVAL_FIELDS:
            if self.memory != "rmt_r" and getattr(self, name) is not None:
                raise ValueError(f"{name}={getattr(self, name)!r} is RMT-R's but memory="
                                 f"{self.memory!r} has no retrieval: set memory='rmt_r' or "
                                 f"leave {name} None")
        if self.retrieval_variant not in (None, *RETRIEVAL_VARIANTS):
            raise ValueError(f"unknown retrieval_variant {self.retrieval_variant!r}: expected "
                             f"one of {RETRIEVAL_VARIANTS}")
        if self.d_model % self.heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by heads={self.heads}: "
                             "pick heads that divide d_model (e.g. d_model=768, heads=12)")
        if self.write_positions not in WRITE_POSITIONS:
            raise ValueError(f"unknown write_positions {self.write_positions!r}: expected one "
                             f"of {WRITE_POSITIONS}")
        if self.write_positions == "own" and (self.positions != "learned"
                                              or self.memory == "none"):
            raise ValueError(
                f"write_positions='own' gives write tokens learned positions of their own, but "
                f"positions={self.positions!r}, memory={self.memory!r}: it needs "
                "positions='learned' and a memory (else set write_positions='follow')")
        if self.segment_positions - self.own_write_rows > self.max_positions:
            raise ValueError(
                f"a segment needs {self.segment_positions} positions ({self.read_tokens} read "
                f"memory + {self.segment_len} tokens + {self.mem_tokens} write memory) but "
                f"max_positions={self.max_positions}: lower segment_len or mem_tokens, or raise "
                "max_positions")
        if self.param_dtype not in DTYPES or self.dtype not in DTYPES:
            raise ValueError(f"param_dtype={self.param_dtype!r}, dtype={self.dtype!r}: expected "
                             f"one of {sorted(DTYPES)}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"unknown remat_policy {self.remat_policy!r}: expected one of "
                             f"{REMAT_POLICIES}")
        if self.scan_unroll < 1:
            raise ValueError(f"scan_unroll={self.scan_unroll} must be >= 1 (1 = no unrolling)")
        if self.bptt_segments is not None and self.bptt_segments < 1:
            raise ValueError(f"bptt_segments={self.bptt_segments} must be >= 1 or None (full BPTT)")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.retrieval_rate < 1.0:
            raise ValueError("dropout rates must lie in [0, 1)")
        bad = [i for i in self.attention_map_layers if not 0 <= i < self.layers]
        if bad:
            raise ValueError(f"attention_map_layers {bad} out of range: "
                             f"layers are 0..{self.layers - 1}")
        if self.answer_mode not in ANSWER_MODES:
            raise ValueError(f"unknown answer_mode {self.answer_mode!r}: expected one of "
                             f"{ANSWER_MODES}")
        if not self.init_std > 0:
            raise ValueError(f"init_std={self.init_std} must be positive: the std of fresh "
                             "weights, e.g. 0.02 (GPT-2) or 1/sqrt(d_model)")
        if self.positions not in POSITIONS:
            raise ValueError(f"unknown positions {self.positions!r}: expected one of "
                             f"{POSITIONS}")
        if self.positions == "rope" and self.head_dim % 2:
            raise ValueError(f"positions='rope' needs an even head_dim, got {self.head_dim} "
                             f"(d_model={self.d_model}, heads={self.heads}): change heads")
        if self.canon_kernel < 0 or self.canon_kernel == 1:
            raise ValueError(f"canon_kernel={self.canon_kernel}: the taps of the causal "
                             "convolution, the position itself and the ones before it: 0 "
                             "(off) or >= 2, e.g. 4")
        if self.attention_chunk < 0:
            raise ValueError(f"attention_chunk={self.attention_chunk} must be >= 0 (0: the "
                             "whole window at once)")
        if self.attention_chunk and self.attention_impl:
            raise ValueError(f"attention_chunk={self.attention_chunk} runs the attention in "
                             f"blocks itself; attention_impl={self.attention_impl!r} runs it "
                             "whole: set one of them")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl={self.attention_impl!r}: expected one of "
                             f"{ATTENTION_IMPLS} (None: 'einsum' on a CPU, else JAX chooses; "
                             "'cudnn' needs a GPU)")

    @classmethod
    def from_fields(cls, fields: dict) -> ModelConfig:
        """A config from its saved fields (`dataclasses.asdict`), also as saved before
        `memory` replaced `retrieval: bool` (when every model kept a retrieval dropout) and
        before RMT-R's block followed the official code."""
        fields = dict(fields)
        if "retrieval" in fields:  # saved before `memory`, and before the official block
            fields.setdefault("memory", "rmt_r" if fields.pop("retrieval") else "rmt")
            if fields["memory"] != "rmt_r":
                fields["retrieval_dropout"] = None
            else:
                fields.setdefault("retrieval_variant", "shared_norm")
        if "attention_map_layers" in fields:
            fields["attention_map_layers"] = tuple(fields["attention_map_layers"])
        return cls(**fields)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    @property
    def retrieval(self) -> bool:
        """RMT-R: the read is [m; retrieve(m, past memories)]."""
        return self.memory == "rmt_r"

    @property
    def retrieval_kind(self) -> str:
        """RMT-R's retrieval block: 'official' unless `retrieval_variant` says otherwise."""
        return self.retrieval_variant or "official"

    @property
    def learned_read_rows(self) -> int:
        """Rows of the learned memory: 2N for the official RMT-R (its first read), else N."""
        return self.read_tokens if self.retrieval and self.retrieval_kind == "official" \
            else self.mem_tokens

    @property
    def retrieval_rate(self) -> float:
        """The dropout rate inside RMT-R's retrieval block."""
        return (DEFAULT_RETRIEVAL_DROPOUT if self.retrieval_dropout is None
                else self.retrieval_dropout)

    @property
    def d_key(self) -> int:
        """ARMT's associative key width: 2 * nu * d_mem DPFP features (0 for the others)."""
        return 2 * ARMT_NU * self.d_mem

    @property
    def read_tokens(self) -> int:
        """Memory tokens read at the start of a segment: N for RMT, 2N ([m; r]) for RMT-R,
        none for ARMT (it reads inside every layer) and for no memory."""
        return {"rmt": 1, "rmt_r": 2}.get(self.memory, 0) * self.mem_tokens

    @property
    def segment_positions(self) -> int:
        """Length of one segment's input: read memory, tokens, write memory."""
        return self.read_tokens + self.segment_len + self.mem_tokens

    @property
    def own_write_rows(self) -> int:
        """Rows of the position table past max_positions: the write tokens' own (N), or 0."""
        return self.mem_tokens if self.write_positions == "own" else 0

    @property
    def compute_dtype(self) -> jnp.dtype:
        return DTYPES[self.dtype]

    @property
    def params_dtype(self) -> jnp.dtype:
        return DTYPES[self.param_dtype]

    @property
    def attention_path(self) -> str | None:
        """attention_impl with None resolved on a CPU backend: 'einsum' there; elsewhere None
        (jax.nn.dot_product_attention picks)."""
        if self.attention_impl is None and jax.default_backend() == "cpu":
            return "einsum"
        return self.attention_impl

    @property
    def checkpoint_policy(self):
        """The `jax.checkpoint` policy, or None for 'full' (save nothing)."""
        if self.remat_policy in ("none", "full"):
            return None
        return getattr(jax.checkpoint_policies, self.remat_policy)

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def _preset(layers, d_model, heads, segment_len, mem_tokens, vocab_size=50257,
            max_positions=None) -> ModelConfig:
    return ModelConfig(layers=layers, d_model=d_model, heads=heads, vocab_size=vocab_size,
                       segment_len=segment_len, mem_tokens=mem_tokens,
                       max_positions=max_positions or 2 * segment_len + 4 * mem_tokens)


PRESETS: dict[str, ModelConfig] = {
    "test": _preset(2, 32, 2, 8, 4, vocab_size=64, max_positions=64),
    "smoke": _preset(1, 32, 2, 8, 2, vocab_size=64),
    "quick": _preset(2, 64, 2, 32, 4),
    "tiny": _preset(2, 128, 4, 128, 8),
    "small": _preset(4, 256, 4, 128, 8),
    "gpt2_small": _preset(12, 768, 12, 512, 16, max_positions=1024),
}


def get_config(preset: str = "tiny", **overrides) -> ModelConfig:
    """A preset by name with fields replaced, e.g. `get_config('tiny', memory='rmt_r')`."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: expected one of {sorted(PRESETS)}")
    return PRESETS[preset].replace(**overrides)
