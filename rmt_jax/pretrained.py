"""GPT-2 weights from a Hugging Face checkpoint into `rmt_jax.core.model.RMT`.

`init_from` names a local folder holding `config.json` and `model.safetensors` (read with
`safetensors`, no torch) or `pytorch_model.bin` (needs torch, imported only then), or the
weights file itself, or a Hugging Face hub name (`gpt2`, `openai-community/gpt2`) fetched
through `huggingface_hub` when it is installed and the hub is reachable.

Contract:
  open_gpt2(init_from) -> Gpt2Checkpoint   reads config.json and the tensor names and shapes
                                           (for safetensors: the header only, no weights)
  check_compatible(ckpt, model_config)     ValueError naming every mismatch: architecture,
                                           layers, d_model, heads, vocabulary, positions,
                                           LayerNorm epsilon, activation, tensor names/shapes
  load_params(ckpt, params, model_config)  a copy of the RMT's nnx.Param state with the GPT-2
                                           tensors in it, each leaf keeping its sharding
  load_gpt2(model, init_from)              all three, into a model in place

Training (`config.model.init_from`, `rmt_jax.train_lib`) runs `open_checked` right after the
model config is known, before anything is compiled, read or written, and `load_params` on the
freshly initialised state of a fresh start only (a resume restores its own checkpoint).

Our backbone is GPT-2's computation (tanh-GELU = `gelu_new`, LayerNorm epsilon 1e-5, scores
scaled by 1/sqrt(head_dim), biases everywhere, learned positions added to the input, final
LayerNorm, LM head tied to the token embedding), so with these weights `RMT.lm_logits`
equals Hugging Face's `GPT2LMHeadModel` logits. Hugging Face's GPT-2 stores its projections
as Conv1D weights [in, out]: `c_attn` [d, 3d] packs q, k, v (then heads) along its output,
which is our `qkv` [d, 3, heads, head_dim] after a reshape; `c_proj` [d, d] takes the merged
heads as input, our `out` [heads, head_dim, d].

Inside a segment the memory tokens take positions too (read memory at 0..R-1, the tokens
after them): the loaded model runs GPT-2 over `[memory; tokens; memory]` embeddings exactly
as Hugging Face's model does when given those `inputs_embeds`.

Not in GPT-2, so freshly initialised: the memory embeddings and RMT-R's retrieval block. The
memory is drawn, as the official RMT code does, from a normal distribution with the standard
deviation of the loaded token embedding (about 0.14 for GPT-2 small; the fresh model's
memory has std `ModelConfig.init_std`, the scale of a fresh token embedding): the
same seed's draw, rescaled, so a run stays reproducible. Rows of `wpe` past
`max_positions` are dropped (`max_positions` must not exceed the checkpoint's `n_positions`);
with `write_positions='own'` the write tokens' own rows after them stay freshly drawn.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from rmt_jax import sharding
from rmt_jax.core.config import ModelConfig
from rmt_jax.core.model import LAYER_NORM_EPSILON, RMT

SAFETENSORS_FILE = "model.safetensors"
TORCH_FILE = "pytorch_model.bin"
CONFIG_FILE = "config.json"
# GPT-2's activation names for the tanh approximation of GELU (ours).
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
# Buffers of older checkpoints (causal masks), not parameters.
_BUFFER = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclasses.dataclass(frozen=True)
class Gpt2Checkpoint:
    """A GPT-2 checkpoint found and read up to its tensor shapes."""

    source: str                              # what init_from named
    weights: Path                            # model.safetensors or pytorch_model.bin
    hf_config: dict[str, Any]                # its config.json
    shapes: dict[str, tuple[int, ...]]       # tensor name ('transformer.' dropped) -> shape
    prefix: str                              # '' or 'transformer.': how the file names them
    tensors: dict[str, np.ndarray] | None = None  # pytorch_model.bin: read whole, once


# -- finding and reading ------------------------------------------------------------------
def _fetch_from_hub(name: str) -> Path:
    try:
        import huggingface_hub
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError as e:
        raise ValueError(f"init_from={name!r} is not a local folder, and fetching it from the "
                         "Hugging Face hub needs huggingface_hub (pip install huggingface_hub): "
                         "or pass the folder of a downloaded checkpoint") from e
    try:
        config = huggingface_hub.hf_hub_download(name, CONFIG_FILE)
        for weights in (SAFETENSORS_FILE, TORCH_FILE):
            try:
                huggingface_hub.hf_hub_download(name, weights)
                break
            except EntryNotFoundError:
                continue
    except Exception as e:  # network, authentication, unknown repository: all say the same
        raise ValueError(f"init_from={name!r} is not a local folder and could not be fetched "
                         f"from the Hugging Face hub ({type(e).__name__}: {e}): pass the folder "
                         f"of a downloaded checkpoint ({CONFIG_FILE} + {SAFETENSORS_FILE})"
                         ) from e
    return Path(config).parent


def _find(init_from: str) -> tuple[Path, Path]:
    """init_from -> (config.json, weights file)."""
    path = Path(init_from).expanduser()
    if not path.exists():
        looks_local = init_from.startswith(("/", ".", "~")) or not _HUB_NAME.match(init_from)
        if looks_local:
            raise ValueError(f"init_from={init_from!r} does not exist: pass a folder holding "
                             f"{CONFIG_FILE} and {SAFETENSORS_FILE} (or {TORCH_FILE}), e.g. "
                             "one written by GPT2LMHeadModel.save_pretrained")
        path = _fetch_from_hub(init_from)
    if path.is_file():
        folder, weights = path.parent, path
        if weights.suffix not in (".safetensors", ".bin"):
            raise ValueError(f"init_from={init_from!r} is a file but neither .safetensors nor "
                             ".bin: pass the checkpoint folder or its weights file")
    else:
        folder = path
        found = [folder / n for n in (SAFETENSORS_FILE, TORCH_FILE) if (folder / n).is_file()]
        if not found:
            sharded = sorted(p.name for p in folder.glob("*.index.json"))
            hint = (f" (it holds a sharded checkpoint, {sharded[0]}: GPT-2 sizes fit one "
                    "file, save it with a larger max_shard_size)") if sharded else ""
            raise ValueError(f"init_from={init_from!r} holds neither {SAFETENSORS_FILE} nor "
                             f"{TORCH_FILE}{hint}")
        weights = found[0]
    config = folder / CONFIG_FILE
    if not config.is_file():
        raise ValueError(f"init_from={init_from!r}: {config} is missing: the checkpoint's "
                         "config.json (n_layer, n_embd, ...) must sit beside its weights")
    return config, weights


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise ValueError(f"{path} is a PyTorch pickle: reading it needs torch (pip install "
                         "torch, or the project's 'peer' extra), or convert the checkpoint to "
                         f"{SAFETENSORS_FILE} (save_pretrained does by default)") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign pickle: torch raises many kinds
        raise ValueError(f"{path} could not be read as a PyTorch state dict "
                         f"({type(e).__name__}: {e})") from e
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in state.items()}


def open_gpt2(init_from: str) -> Gpt2Checkpoint:
    """Finds the checkpoint and reads its config and tensor shapes (see the module doc)."""
    config_path, weights = _find(str(init_from))
    try:
        hf_config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_path} is not valid JSON ({e})") from e
    tensors = None
    if weights.suffix == ".bin":
        tensors = _read_torch(weights)
        shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    else:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(weights), framework="np") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{weights} could not be read as safetensors ({e})") from e
    prefix = "transformer." if any(k.startswith("transformer.") for k in shapes) else ""
    shapes = {k.removeprefix(prefix): v for k, v in shapes.items()}
    if tensors is not None:
        tensors = {k.removeprefix(prefix): v for k, v in tensors.items()}
    return Gpt2Checkpoint(str(init_from), weights, hf_config, shapes, prefix, tensors)


# -- checking -----------------------------------------------------------------------------
def expected_shapes(cfg: ModelConfig, n_positions: int) -> dict[str, tuple[int, ...]]:
    """Hugging Face GPT-2 tensor names -> shapes, for our config's sizes."""
    d, v = cfg.d_model, cfg.vocab_size
    shapes = {"wte.weight": (v, d), "wpe.weight": (n_positions, d),
              "ln_f.weight": (d,), "ln_f.bias": (d,)}
    for i in range(cfg.layers):
        shapes.update({
            f"h.{i}.ln_1.weight": (d,), f"h.{i}.ln_1.bias": (d,),
            f"h.{i}.attn.c_attn.weight": (d, 3 * d), f"h.{i}.attn.c_attn.bias": (3 * d,),
            f"h.{i}.attn.c_proj.weight": (d, d), f"h.{i}.attn.c_proj.bias": (d,),
            f"h.{i}.ln_2.weight": (d,), f"h.{i}.ln_2.bias": (d,),
            f"h.{i}.mlp.c_fc.weight": (d, 4 * d), f"h.{i}.mlp.c_fc.bias": (4 * d,),
            f"h.{i}.mlp.c_proj.weight": (4 * d, d), f"h.{i}.mlp.c_proj.bias": (d,),
        })
    return shapes


def check_compatible(ckpt: Gpt2Checkpoint, cfg: ModelConfig) -> None:
    """ValueError listing every way the checkpoint cannot become this model's backbone."""
    hf = ckpt.hf_config
    where = f"init_from={ckpt.source!r}"
    model_type = hf.get("model_type")
    if model_type != "gpt2":
        arch = ", ".join(hf.get("architectures") or []) or "unknown architecture"
        raise ValueError(f"{where} is a {model_type!r} checkpoint ({arch}), not GPT-2: our "
                         "backbone takes GPT-2 weights only (model_type 'gpt2' in config.json)")
    problems = []
    if cfg.positions != "learned":
        problems.append(f"positions: the model uses positions={cfg.positions!r}, GPT-2 learned "
                        "position embeddings (set --config.model.positions=learned)")
    for ours, theirs in (("layers", "n_layer"), ("d_model", "n_embd"), ("heads", "n_head"),
                         ("vocab_size", "vocab_size")):
        if hf.get(theirs) != getattr(cfg, ours):
            problems.append(f"{ours}: the checkpoint has {theirs}={hf.get(theirs)}, the model "
                            f"{getattr(cfg, ours)} (set --config.model.{ours}={hf.get(theirs)})")
    n_positions = hf.get("n_positions", hf.get("n_ctx"))
    if not isinstance(n_positions, int) or cfg.max_positions > n_positions:
        problems.append(f"positions: the model has max_positions={cfg.max_positions} (a "
                        f"segment needs {cfg.segment_positions}), the checkpoint n_positions="
                        f"{n_positions} (set --config.model.max_positions<={n_positions} and "
                        "keep segment_len + memory within it)")
    eps = hf.get("layer_norm_epsilon", LAYER_NORM_EPSILON)
    if eps != LAYER_NORM_EPSILON:
        problems.append(f"LayerNorm epsilon: the checkpoint has {eps}, our LayerNorm "
                        f"{LAYER_NORM_EPSILON}")
    act = hf.get("activation_function", "gelu_new")
    if act not in TANH_GELU:
        problems.append(f"activation: the checkpoint has {act!r}, our MLP the tanh GELU "
                        f"({' = '.join(TANH_GELU)})")
    if hf.get("n_inner") not in (None, 4 * cfg.d_model):
        problems.append(f"MLP width: the checkpoint has n_inner={hf['n_inner']}, ours is "
                        f"4 * d_model = {4 * cfg.d_model}")
    for flag, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                       ("add_cross_attention", False), ("tie_word_embeddings", True)):
        if hf.get(flag, want) != want:
            problems.append(f"{flag}={hf[flag]}: our backbone has {flag}={want}")
    if not problems:  # the config agrees: the tensors must too
        expected = expected_shapes(cfg, n_positions)
        found = {k: v for k, v in ckpt.shapes.items()
                 if not _BUFFER.match(k) and k != "lm_head.weight"}
        missing = sorted(expected.keys() - found.keys())
        extra = sorted(found.keys() - expected.keys())
        wrong = [f"{k} {found[k]} (expected {expected[k]})" for k in sorted(expected)
                 if k in found and tuple(found[k]) != expected[k]]
        lm_head = ckpt.shapes.get("lm_head.weight")
        if lm_head is not None and tuple(lm_head) != expected["wte.weight"]:
            wrong.append(f"lm_head.weight {lm_head} (expected {expected['wte.weight']})")
        for what, names in (("missing tensors", missing), ("unexpected tensors", extra),
                            ("tensors of another shape", wrong)):
            if names:
                more = f" and {len(names) - 5} more" if len(names) > 5 else ""
                problems.append(f"{what}: {', '.join(names[:5])}{more}")
    if problems:
        raise ValueError(f"{where} ({ckpt.weights}) does not fit the model: "
                         + "; ".join(problems))


def open_checked(init_from: str, cfg: ModelConfig) -> Gpt2Checkpoint:
    """open_gpt2 then check_compatible: everything but reading the weights."""
    ckpt = open_gpt2(init_from)
    check_compatible(ckpt, cfg)
    return ckpt


# -- mapping ------------------------------------------------------------------------------
def _read_tensors(ckpt: Gpt2Checkpoint) -> dict[str, np.ndarray]:
    if ckpt.tensors is not None:
        return ckpt.tensors
    from safetensors.numpy import load_file

    return {k.removeprefix(ckpt.prefix): v for k, v in load_file(str(ckpt.weights)).items()}


def gpt2_arrays(ckpt: Gpt2Checkpoint, cfg: ModelConfig) -> dict[tuple, np.ndarray]:
    """Our parameter paths (as in `nnx.to_pure_dict`) -> arrays in our layout, float32."""
    t = {k: np.asarray(v, np.float32) for k, v in _read_tensors(ckpt).items()}
    if cfg.tied_head and "lm_head.weight" in t and \
            not np.array_equal(t["lm_head.weight"], t["wte.weight"]):
        raise ValueError(f"init_from={ckpt.source!r}: lm_head.weight differs from wte.weight, "
                         "but model.tied_head=True ties the LM head to the token embedding: "
                         "set --config.model.tied_head=False")
    d, h, hd = cfg.d_model, cfg.heads, cfg.head_dim
    out = {("wte",): t["wte.weight"], ("wpe",): t["wpe.weight"][: cfg.max_positions],
           ("ln_f", "scale"): t["ln_f.weight"], ("ln_f", "bias"): t["ln_f.bias"]}
    if not cfg.tied_head:  # our own head, starting as GPT-2's (its lm_head is its wte)
        out[("lm_head",)] = t.get("lm_head.weight", t["wte.weight"]).copy()
    for i in range(cfg.layers):
        g = lambda name, i=i: t[f"h.{i}.{name}"]  # noqa: E731
        out.update({
            ("blocks", i, "ln1", "scale"): g("ln_1.weight"),
            ("blocks", i, "ln1", "bias"): g("ln_1.bias"),
            # [d, 3d]: output (q|k|v, then heads) -> [d, 3, h, hd]
            ("blocks", i, "attn", "qkv"): g("attn.c_attn.weight").reshape(d, 3, h, hd),
            ("blocks", i, "attn", "qkv_bias"): g("attn.c_attn.bias").reshape(3, h, hd),
            # [d, d]: input (merged heads) -> [h, hd, d]
            ("blocks", i, "attn", "out"): g("attn.c_proj.weight").reshape(h, hd, d),
            ("blocks", i, "attn", "out_bias"): g("attn.c_proj.bias"),
            ("blocks", i, "ln2", "scale"): g("ln_2.weight"),
            ("blocks", i, "ln2", "bias"): g("ln_2.bias"),
            ("blocks", i, "mlp", "fc"): g("mlp.c_fc.weight"),
            ("blocks", i, "mlp", "fc_bias"): g("mlp.c_fc.bias"),
            ("blocks", i, "mlp", "proj"): g("mlp.c_proj.weight"),
            ("blocks", i, "mlp", "proj_bias"): g("mlp.c_proj.bias"),
        })
    return out


def _key(path) -> tuple:
    """A pytree path in an nnx.State -> ('blocks', 0, 'attn', 'qkv') (Variable '.value' dropped)."""
    return tuple(getattr(k, "key", getattr(k, "idx", None)) for k in path
                 if not isinstance(k, jax.tree_util.GetAttrKey))


def load_params(ckpt: Gpt2Checkpoint, params: nnx.State, cfg: ModelConfig) -> nnx.State:
    """A copy of `params` (the RMT's nnx.Param state) with the GPT-2 weights in it.

    Each replaced leaf keeps its dtype and sharding (every process reads the whole file and
    places its shards); the memory is rescaled to the loaded token embedding's std.
    """
    arrays = gpt2_arrays(ckpt, cfg)
    memory_scale = float(arrays[("wte",)].std()) / cfg.init_std
    seen = set()

    def replace(path, leaf):
        key = _key(path)
        if key == ("memory",):
            scaled = (leaf.astype(np.float32) * memory_scale).astype(leaf.dtype)
            return jax.device_put(scaled, leaf.sharding)
        if key not in arrays:
            return leaf
        seen.add(key)
        value = arrays[key]
        if key == ("wpe",) and value.shape[0] + cfg.own_write_rows == leaf.shape[0]:
            # write_positions='own': GPT-2's rows, then the write tokens' own as drawn
            return sharding.set_leading_rows(leaf, value)
        if value.shape != leaf.shape:
            raise ValueError(f"init_from={ckpt.source!r}: {'/'.join(map(str, key))} has shape "
                             f"{value.shape} after mapping, the model {leaf.shape}")
        return sharding.place_like(value, leaf)

    new = jax.tree_util.tree_map_with_path(replace, params)
    unused = sorted(set(arrays) - seen)
    if unused:  # the model lacks a mapped parameter: a rename in model.py
        raise ValueError(f"GPT-2 mapping names parameters the model lacks: {unused[:3]}")
    return new


def load_gpt2(model: RMT, init_from: str) -> Gpt2Checkpoint:
    """Checks and loads a GPT-2 checkpoint into `model` in place; returns the checkpoint."""
    ckpt = open_checked(init_from, model.config)
    nnx.update(model, load_params(ckpt, nnx.state(model, nnx.Param), model.config))
    return ckpt
