"""GPT-2 checkpoints into the RMT (rmt_jax.pretrained).

Always: a tiny random GPT-2 written in Hugging Face's tensor names and layout (numpy +
safetensors), loaded into a tiny RMT and compared with an independent float64 numpy GPT-2
written here from Hugging Face's math. The comparison covers the plain language model
(`RMT.lm_logits`: tokens at positions 0..t-1, no memory) and the RMT's own use of the
backbone: a segment `[read memory; tokens; write memory]` (memory outputs) and the answer
segment (logits), which the reference runs as GPT-2 over those input embeddings, exactly what
Hugging Face's model does with `inputs_embeds`. Layer norms and biases are random, so each
tensor's mapping matters.

Where torch and transformers are installed (the `peer` extra): a randomly initialised
`transformers.GPT2LMHeadModel`, saved as safetensors and as pytorch_model.bin, gives the
same logits within 1e-4.

Bad inputs (missing path, other shapes, vocabulary or architecture) raise ValueErrors naming
the problem, and training stops with them before writing anything.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from rmt_jax import pretrained
from rmt_jax.core.config import ModelConfig
from rmt_jax.core.model import RMT
from rmt_jax.core.recurrence import initial_state

# numbers and behaviour, not speed: XLA's optimisations off (conftest.fast_compiles)
pytestmark = pytest.mark.usefixtures("fast_compiles")

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-4  # max abs difference of float32 logits and hidden states

CFG = ModelConfig(layers=2, d_model=32, heads=4, vocab_size=97, segment_len=8, mem_tokens=3,
                  max_positions=40)
N_POSITIONS = 48  # the checkpoint has more positions than the model uses


# -- a tiny GPT-2 in Hugging Face's layout ----------------------------------------------
def hf_config(**changes) -> dict:
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 2,
              "n_embd": 32, "n_head": 4, "vocab_size": 97, "n_positions": N_POSITIONS,
              "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new", "n_inner": None}
    config.update(changes)
    return config


def random_gpt2(seed: int = 0, n_layer: int = 2, d: int = 32, vocab: int = 97,
                n_positions: int = N_POSITIONS, mlp: int | None = None) -> dict[str, np.ndarray]:
    """HF GPT-2 tensors (Conv1D weights [in, out]) with random norms and biases."""
    rng = np.random.default_rng(seed)
    mlp = mlp or 4 * d
    w = lambda *shape, std=0.2: (rng.normal(size=shape) * std).astype(np.float32)  # noqa: E731
    t = {"wte.weight": w(vocab, d), "wpe.weight": w(n_positions, d, std=0.1),
         "ln_f.weight": 1 + w(d, std=0.1), "ln_f.bias": w(d, std=0.1)}
    for i in range(n_layer):
        t.update({
            f"h.{i}.ln_1.weight": 1 + w(d, std=0.1), f"h.{i}.ln_1.bias": w(d, std=0.1),
            f"h.{i}.attn.c_attn.weight": w(d, 3 * d), f"h.{i}.attn.c_attn.bias": w(3 * d),
            f"h.{i}.attn.c_proj.weight": w(d, d), f"h.{i}.attn.c_proj.bias": w(d),
            f"h.{i}.ln_2.weight": 1 + w(d, std=0.1), f"h.{i}.ln_2.bias": w(d, std=0.1),
            f"h.{i}.mlp.c_fc.weight": w(d, mlp), f"h.{i}.mlp.c_fc.bias": w(mlp),
            f"h.{i}.mlp.c_proj.weight": w(mlp, d), f"h.{i}.mlp.c_proj.bias": w(d),
        })
    return t


def write_checkpoint(folder: Path, tensors: dict, config: dict | None = None,
                     prefix: str = "transformer.") -> Path:
    """model.safetensors + config.json as save_pretrained lays them out."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({prefix + k: v for k, v in tensors.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config or hf_config()))
    return folder


# -- the reference: Hugging Face GPT-2's forward pass in float64 numpy --------------------
def _layer_norm(x, g, b, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * g + b


def _gelu_new(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def reference_hidden(t: dict, embeds: np.ndarray) -> np.ndarray:
    """GPT-2 over input embeddings [T, d] at positions 0..T-1 -> [T, d] after ln_f."""
    t = {k: v.astype(np.float64) for k, v in t.items()}
    n, d = embeds.shape
    heads = 4
    hd = d // heads
    x = embeds.astype(np.float64) + t["wpe.weight"][:n]
    causal = np.tril(np.ones((n, n), bool))
    layer = 0
    while f"h.{layer}.ln_1.weight" in t:
        p = lambda name, i=layer: t[f"h.{i}.{name}"]  # noqa: E731
        a = _layer_norm(x, p("ln_1.weight"), p("ln_1.bias"))
        qkv = a @ p("attn.c_attn.weight") + p("attn.c_attn.bias")
        q, k, v = (m.reshape(n, heads, hd).transpose(1, 0, 2) for m in np.split(qkv, 3, -1))
        scores = np.where(causal, q @ k.transpose(0, 2, 1) / math.sqrt(hd), -np.inf)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        y = (weights @ v).transpose(1, 0, 2).reshape(n, d)
        x = x + y @ p("attn.c_proj.weight") + p("attn.c_proj.bias")
        m = _layer_norm(x, p("ln_2.weight"), p("ln_2.bias"))
        x = x + _gelu_new(m @ p("mlp.c_fc.weight") + p("mlp.c_fc.bias")) @ p(
            "mlp.c_proj.weight") + p("mlp.c_proj.bias")
        layer += 1
    return _layer_norm(x, t["ln_f.weight"], t["ln_f.bias"])


def loaded(folder: Path, cfg: ModelConfig = CFG, seed: int = 0) -> RMT:
    model = RMT(cfg, rngs=nnx.Rngs(seed))
    pretrained.load_gpt2(model, str(folder))
    return model


def assert_close(ours, reference, what: str) -> float:
    diff = float(np.max(np.abs(np.asarray(ours, np.float64) - reference)))
    assert diff <= TOL, f"{what}: max abs diff {diff:.2e} > {TOL}"
    return diff


# -- always: numpy checkpoints --------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["transformer.", ""])
def test_lm_logits_equal_a_numpy_gpt2(tmp_path, prefix):
    tensors = random_gpt2()
    model = loaded(write_checkpoint(tmp_path / "ckpt", tensors, prefix=prefix))
    tokens = np.random.default_rng(1).integers(0, CFG.vocab_size, (2, 21))
    ours = model.lm_logits(jnp.asarray(tokens))
    for b in range(2):
        want = reference_hidden(tensors, tensors["wte.weight"][tokens[b]]) @ tensors[
            "wte.weight"].T.astype(np.float64)
        assert want.std() > 0.5  # logits that vary: the tolerance means something
        assert_close(ours[b], want, "lm logits")


@pytest.mark.parametrize("memory", ["rmt", "rmt_r"])
def test_segment_and_answer_equal_gpt2_over_the_memory_embeddings(tmp_path, memory):
    """The RMT's segments run the loaded GPT-2 over [read; tokens; write] embeddings; the
    memory tokens take positions 0..R-1. A partly filled segment puts its write memory right
    after its real tokens."""
    tensors = random_gpt2()
    cfg = CFG.replace(memory=memory)
    model = loaded(write_checkpoint(tmp_path / "ckpt", tensors), cfg)
    rng = np.random.default_rng(2)
    batch, n, length = 2, cfg.mem_tokens, np.array([cfg.segment_len, 5])
    tokens = rng.integers(0, cfg.vocab_size, (batch, cfg.segment_len))
    state = initial_state(model, batch, capacity=1)
    m = state.memory
    read = model.read_memory(m, state.buffer, state.buffer_valid)
    memory, _, _ = model.segment(read, m, jnp.asarray(tokens), jnp.asarray(length))
    query = rng.integers(0, cfg.vocab_size, (batch, 6))
    logits = model.logits(model.answer_hidden(read, jnp.asarray(query)))
    wte = tensors["wte.weight"]
    for b in range(batch):
        r, mb = np.asarray(read[b], np.float64), np.asarray(m[b], np.float64)
        embeds = np.concatenate([r, wte[tokens[b, : length[b]]], mb])
        assert_close(memory[b], reference_hidden(tensors, embeds)[-n:], "segment memory")
        embeds = np.concatenate([r, wte[query[b]]])
        want = reference_hidden(tensors, embeds)[len(r):] @ wte.T.astype(np.float64)
        assert_close(logits[b], want, "answer logits")


def test_memory_rescaled_to_the_embedding_std_and_retrieval_kept(tmp_path):
    tensors = random_gpt2()
    cfg = CFG.replace(memory="rmt_r")
    fresh = RMT(cfg, rngs=nnx.Rngs(3))
    model = loaded(write_checkpoint(tmp_path / "ckpt", tensors), cfg, seed=3)
    scale = tensors["wte.weight"].std() / cfg.init_std
    np.testing.assert_allclose(model.memory[...], fresh.memory[...] * scale, rtol=1e-6)
    assert not np.allclose(model.memory[...], fresh.memory[...])
    for a, b in zip(jax.tree.leaves(nnx.state(model.retrieval, nnx.Param)),
                    jax.tree.leaves(nnx.state(fresh.retrieval, nnx.Param)), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(model.wpe[...], tensors["wpe.weight"][: cfg.max_positions])


def test_armt_own_write_positions_take_gpt2_rows_and_keep_their_own(tmp_path):
    """write_positions='own' (the ARMT reference's wrap_pos): GPT-2's position rows, then the
    write tokens' N rows as freshly drawn."""
    tensors = random_gpt2()
    cfg = CFG.replace(memory="armt", d_mem=8, write_positions="own")
    fresh = RMT(cfg, rngs=nnx.Rngs(3))
    model = loaded(write_checkpoint(tmp_path / "ckpt", tensors), cfg, seed=3)
    p = cfg.max_positions
    assert model.wpe.shape == (p + cfg.mem_tokens, cfg.d_model)
    np.testing.assert_array_equal(model.wpe[...][:p], tensors["wpe.weight"][:p])
    np.testing.assert_array_equal(model.wpe[...][p:], fresh.wpe[...][p:])


def test_loading_keeps_the_parameter_dtype(tmp_path):
    model = loaded(write_checkpoint(tmp_path / "ckpt", random_gpt2()),
                   CFG.replace(param_dtype="bfloat16", dtype="bfloat16"))
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {
        jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize("variant", ["gpt2_small,qa1", "gpt2_small,qa1,retrieval"])
def test_gpt2_small_preset_takes_gpt2_small(variant, gpt2_dir):
    """The preset with GPT-2's tokenizer fits GPT-2 small's published config.json and tensor
    shapes (the 500 MB of weights themselves are not needed to check that)."""
    from babilong_tfds.tokenizer import get_tokenizer, tokenizer_kind
    from configs import rmt_babilong
    from rmt_jax import input_pipeline

    config = rmt_babilong.get_config(variant)
    assert tokenizer_kind(config.data.tokenizer) == "gpt2"
    vocab = get_tokenizer(f"gpt2:{gpt2_dir}").vocab_size
    cfg = input_pipeline.model_config(config, vocab)
    gpt2_small = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
                  "activation_function": "gelu_new", "n_ctx": 1024, "n_embd": 768, "n_head": 12,
                  "n_layer": 12, "n_positions": 1024, "layer_norm_epsilon": 1e-05,
                  "vocab_size": 50257}
    shapes = {"wte.weight": (50257, 768), "wpe.weight": (1024, 768), "ln_f.weight": (768,),
              "ln_f.bias": (768,)}
    for i in range(12):  # GPT-2 small's tensors, as its model.safetensors lists them
        shapes.update({f"h.{i}.{k}": v for k, v in {
            "ln_1.weight": (768,), "ln_1.bias": (768,), "attn.bias": (1, 1, 1024, 1024),
            "attn.c_attn.weight": (768, 2304), "attn.c_attn.bias": (2304,),
            "attn.c_proj.weight": (768, 768), "attn.c_proj.bias": (768,),
            "ln_2.weight": (768,), "ln_2.bias": (768,),
            "mlp.c_fc.weight": (768, 3072), "mlp.c_fc.bias": (3072,),
            "mlp.c_proj.weight": (3072, 768), "mlp.c_proj.bias": (768,)}.items()})
    ckpt = pretrained.Gpt2Checkpoint("gpt2", Path("model.safetensors"), gpt2_small, shapes, "")
    pretrained.check_compatible(ckpt, cfg)
    assert cfg.segment_positions <= cfg.max_positions <= 1024 and cfg.segment_len == 512


# -- bad inputs -------------------------------------------------------------------------------
def test_missing_path_and_incomplete_folders(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        pretrained.open_gpt2(str(tmp_path / "no_such_gpt2"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither model.safetensors nor pytorch_model.bin"):
        pretrained.open_gpt2(str(tmp_path / "empty"))
    folder = write_checkpoint(tmp_path / "ckpt", random_gpt2())
    (folder / "config.json").unlink()
    with pytest.raises(ValueError, match="config.json is missing"):
        pretrained.open_gpt2(str(folder))


@pytest.mark.parametrize(("tensors", "config", "expect"), [
    ({"n_layer": 3}, {"n_layer": 3}, "layers: the checkpoint has n_layer=3"),
    ({"d": 48}, {"n_embd": 48}, "d_model: the checkpoint has n_embd=48"),
    ({}, {"n_head": 8}, "heads: the checkpoint has n_head=8"),
    ({"vocab": 50257}, {"vocab_size": 50257}, "vocab_size: the checkpoint has vocab_size=50257"),
    ({"n_positions": 32}, {"n_positions": 32}, "positions: the model has max_positions=40"),
    ({}, {"layer_norm_epsilon": 1e-6}, "LayerNorm epsilon"),
    ({}, {"activation_function": "relu"}, "activation: the checkpoint has 'relu'"),
    ({"mlp": 96}, {}, "tensors of another shape: h.0.mlp.c_fc.bias"),
    ({}, {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "not GPT-2"),
])
def test_checkpoints_that_do_not_fit_are_named(tmp_path, tensors, config, expect):
    folder = write_checkpoint(tmp_path / "ckpt", random_gpt2(**tensors), hf_config(**config))
    with pytest.raises(ValueError, match=expect):
        pretrained.open_checked(str(folder), CFG)


def test_every_mismatch_is_named_at_once(tmp_path):
    folder = write_checkpoint(tmp_path / "ckpt", random_gpt2(n_layer=3, vocab=50),
                              hf_config(n_layer=3, vocab_size=50))
    with pytest.raises(ValueError, match="layers: .*; vocab_size: ") as e:
        pretrained.open_checked(str(folder), CFG)
    assert "--config.model.layers=3" in str(e.value)


def test_missing_tensor_is_named(tmp_path):
    tensors = random_gpt2()
    del tensors["h.1.ln_2.bias"]
    folder = write_checkpoint(tmp_path / "ckpt", tensors)
    with pytest.raises(ValueError, match=r"missing tensors: h\.1\.ln_2\.bias"):
        pretrained.open_checked(str(folder), CFG)


def test_hub_names_are_fetched_and_a_failed_fetch_is_an_error(tmp_path, monkeypatch):
    """A name that is no local path goes to the hub (a stand-in here: no network in tests):
    config.json, then model.safetensors (else pytorch_model.bin); a failure is a ValueError."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub.errors import EntryNotFoundError

    repo = write_checkpoint(tmp_path / "hub" / "org" / "tiny-gpt2", random_gpt2())
    asked = []

    def download(name, filename, **kwargs):
        asked.append((name, filename))
        path = tmp_path / "hub" / name / filename
        if not path.is_file():
            raise EntryNotFoundError(f"{filename} not in {name}")
        return str(path)

    monkeypatch.chdir(tmp_path)  # 'org/tiny-gpt2' is no folder here
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    ckpt = pretrained.open_checked("org/tiny-gpt2", CFG)
    assert ckpt.weights == repo / "model.safetensors"
    assert asked == [("org/tiny-gpt2", "config.json"), ("org/tiny-gpt2", "model.safetensors")]

    def offline(name, filename, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(ValueError, match="could not be fetched from the Hugging Face hub"):
        pretrained.open_gpt2("gpt2")
    with pytest.raises(ValueError, match="does not exist"):  # a path is never a hub name
        pretrained.open_gpt2("./gpt2")


def test_pytorch_bin_without_torch_says_so(tmp_path, monkeypatch):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    (tmp_path / "config.json").write_text(json.dumps(hf_config()))
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    with pytest.raises(ValueError, match="needs torch"):
        pretrained.open_gpt2(str(tmp_path))


def test_training_stops_before_writing_anything(tmp_path):
    """launch.train with a missing init_from: an error line, no config.json in the workdir;
    train_lib with a checkpoint of another vocabulary: the ValueError, nothing written."""
    from configs import rmt_babilong
    from rmt_jax import train_lib

    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "launch.train", "--config=configs/rmt_babilong.py:smoke,synthetic",
         f"--workdir={workdir}", f"--config.model.init_from={tmp_path / 'no_gpt2'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "error: init_from=" in proc.stderr and "does not exist" in proc.stderr
    assert not (workdir / "config.json").exists()
    config = rmt_babilong.get_config("smoke,synthetic")  # 1 layer, d 32, vocab 64
    folder = write_checkpoint(tmp_path / "ckpt", random_gpt2(n_layer=1),
                              hf_config(n_layer=1, n_head=2))
    config.model.init_from = str(folder)
    with pytest.raises(ValueError, match="vocab_size: the checkpoint has vocab_size=97"):
        train_lib.train_and_evaluate(config, workdir)
    assert not (workdir / "config.json").exists()


def test_training_starts_from_the_checkpoint_and_a_resume_does_not_reload(tmp_path):
    """A fresh run's parameters are the checkpoint's (learning rate 0: a step changes
    nothing); a resume restores its own checkpoint, whatever init_from now holds."""
    from configs import rmt_babilong
    from rmt_jax import checkpointing, train_lib

    config = rmt_babilong.get_config("smoke,synthetic")
    tensors = random_gpt2(n_layer=1, vocab=64)
    config.model.init_from = str(write_checkpoint(tmp_path / "ckpt", tensors,
                                                  hf_config(n_layer=1, n_head=2, vocab_size=64)))
    config.optim.learning_rate = 0.0
    config.train.num_steps = 1
    config.train.log_every = 1
    config.train.checkpoint_every = 1
    config.train.answer_rows = 0
    config.eval.every = 0
    config.curriculum.segments = (1,)
    train_lib.train_and_evaluate(config, tmp_path / "run")
    model, _, step = checkpointing.restore_for_inference(tmp_path / "run")
    assert step == 1
    np.testing.assert_array_equal(model.wte[...], tensors["wte.weight"])
    np.testing.assert_array_equal(model.blocks[0].mlp.fc[...], tensors["h.0.mlp.c_fc.weight"])
    np.testing.assert_array_equal(model.wpe[...],
                                  tensors["wpe.weight"][: model.config.max_positions])
    write_checkpoint(tmp_path / "ckpt", random_gpt2(seed=5, n_layer=1, vocab=64),
                     hf_config(n_layer=1, n_head=2, vocab_size=64))
    config.train.num_steps = 2
    train_lib.train_and_evaluate(config, tmp_path / "run", allow_config_change=["train"])
    model, _, step = checkpointing.restore_for_inference(tmp_path / "run")
    assert step == 2
    np.testing.assert_array_equal(model.wte[...], tensors["wte.weight"])


SHARDED_LOAD = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import jax
import numpy as np
from flax import nnx
from rmt_jax import pretrained, sharding
from rmt_jax.core.model import RMT
from tests.test_pretrained import CFG

ckpt = pretrained.open_checked(sys.argv[1], CFG)
mesh = jax.make_mesh((2, 2), ("data", "model"))
init = lambda: nnx.state(RMT(CFG, rngs=nnx.Rngs(0)), nnx.Param)
params = jax.jit(init, out_shardings=sharding.state_shardings(jax.eval_shape(init), mesh))()
split = 0
for a, b, c in zip(jax.tree.leaves(pretrained.load_params(ckpt, params, CFG)),
                   jax.tree.leaves(params),
                   jax.tree.leaves(pretrained.load_params(ckpt, init(), CFG)), strict=True):
    assert a.sharding == b.sharding, (a.sharding, b.sharding)
    # rtol: the rescaled memory's fresh draw, jitted here and eager there, may differ by an ulp
    np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-6)
    split += not a.sharding.is_fully_replicated
print(split)
"""


def test_loading_into_sharded_parameters_keeps_their_shardings(tmp_path):
    """On a 2x2 (data, model) mesh of fake CPU devices: heads and MLP columns split over
    'model', each leaf keeps its sharding and holds what a one-device load holds."""
    folder = write_checkpoint(tmp_path / "ckpt", random_gpt2())
    proc = subprocess.run([sys.executable, "-c", SHARDED_LOAD, str(folder)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.strip().splitlines()[-1]) >= 6  # qkv, out, fc, ... per layer


# -- where torch and transformers are installed: Hugging Face's own GPT-2 ------------------
@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pytorch_bin"])
def test_logits_equal_transformers_gpt2(tmp_path, safe):
    torch = pytest.importorskip("torch", reason="torch is not installed (the 'peer' extra)")
    transformers = pytest.importorskip("transformers",
                                       reason="transformers is not installed (the 'peer' extra)")
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=101,
                                     n_positions=64, bos_token_id=100, eos_token_id=100)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    with torch.no_grad():  # random norms and biases too (the fresh ones are 1 and 0)
        for name, p in hf.named_parameters():
            if "ln_" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.1)
    weights = {True: "model.safetensors", False: "pytorch_model.bin"}[safe]
    if safe:
        hf.save_pretrained(tmp_path / "hf")
    else:  # transformers 5 writes safetensors only: the older layout (a state_dict pickle)
        hf.config.save_pretrained(tmp_path / "hf")
        torch.save(hf.state_dict(), tmp_path / "hf" / weights)
    assert (tmp_path / "hf" / weights).is_file()
    cfg = ModelConfig(layers=2, d_model=64, heads=4, vocab_size=101, segment_len=16,
                      mem_tokens=4, max_positions=64)
    model = RMT(cfg, rngs=nnx.Rngs(0))
    ckpt = pretrained.load_gpt2(model, str(tmp_path / "hf"))
    assert ckpt.weights.name == weights

    tokens = np.random.default_rng(0).integers(0, 101, (2, 40))
    with torch.no_grad():
        want = hf(torch.tensor(tokens)).logits.numpy()
    diff = assert_close(model.lm_logits(jnp.asarray(tokens)), want, "lm logits")
    # The segment through HF's inputs_embeds: memory tokens at positions 0..n-1.
    m = model.initial_memory(2)
    memory, _, _ = model.segment(m, m, jnp.asarray(tokens[:, :16]), jnp.full((2,), 16))
    embeds = jnp.concatenate([m, model.embed(jnp.asarray(tokens[:, :16])), m], axis=1)
    with torch.no_grad():
        hidden = hf.transformer(inputs_embeds=torch.tensor(np.asarray(embeds)))
    diff = max(diff, assert_close(memory, hidden.last_hidden_state.numpy()[:, -4:],
                                  "segment memory"))
    print(f"max abs diff vs transformers {transformers.__version__} ({weights}): {diff:.2e}")


def test_an_untied_head_starts_as_gpt2s_and_a_differing_head_needs_it(tmp_path):
    untied = dataclasses.replace(CFG, tied_head=False)
    tensors = random_gpt2()
    model = loaded(write_checkpoint(tmp_path / "tied", tensors), untied)
    np.testing.assert_array_equal(model.lm_head[...], tensors["wte.weight"])
    np.testing.assert_array_equal(model.wte[...], tensors["wte.weight"])
    # a checkpoint whose head is not its embedding: refused by a tied model, loaded by ours
    own = {**tensors, "lm_head.weight": random_gpt2(seed=1)["wte.weight"]}
    folder = write_checkpoint(tmp_path / "own", own, prefix="")
    with pytest.raises(ValueError, match="lm_head.weight differs from wte.weight.*"
                                         "set --config.model.tied_head=False"):
        loaded(folder)
    model = loaded(folder, untied)
    np.testing.assert_array_equal(model.lm_head[...], own["lm_head.weight"])
    tokens = np.random.default_rng(1).integers(0, CFG.vocab_size, (1, 9))
    want = reference_hidden(own, own["wte.weight"][tokens[0]]) @ own[
        "lm_head.weight"].T.astype(np.float64)
    assert_close(model.lm_logits(jnp.asarray(tokens))[0], want, "untied lm logits")
