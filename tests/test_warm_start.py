"""Starting a run from one of our models (`config.model.init_from=FOLDER`, rmt_jax.warm_start):
the shared parameters copied, a new memory's own parameters fresh, a resume that restores its
own checkpoint, and clear errors before anything is written."""

from __future__ import annotations

import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import rmt_babilong
from rmt_jax import RMT, checkpointing, train_lib, warm_start
from tests.conftest import REPO
from tests.test_train_lib import read_metrics

# numbers and behaviour, not speed: XLA's optimisations off (conftest.fast_compiles)
pytestmark = pytest.mark.usefixtures("fast_compiles")


def smoke(memory: str = "", **train) -> ml_collections.ConfigDict:
    config = rmt_babilong.get_config("smoke,synthetic" + (f",{memory}" if memory else ""))
    config.curriculum.segments = (1,)
    config.train.log_every = 1
    config.train.checkpoint_every = 1
    config.train.answer_rows = 0
    config.eval.every = 0
    for k, v in train.items():
        setattr(config.train if k != "learning_rate" else config.optim, k, v)
    return config


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """An RMT trained for 3 steps at a high learning rate: its parameters differ from any
    fresh draw."""
    workdir = tmp_path_factory.mktemp("warm") / "source"
    train_lib.train_and_evaluate(smoke(num_steps=3, learning_rate=1e-2), workdir)
    return workdir


def start_from(source, workdir, memory: str = ""):
    """One step at learning rate 0 from `source`: the run's first loss and its parameters."""
    config = smoke(memory, num_steps=1, learning_rate=0.0)
    config.model.init_from = str(source)
    train_lib.train_and_evaluate(config, workdir)
    model, _, _ = checkpointing.restore_for_inference(workdir)
    return read_metrics(workdir)[0]["train/loss"], model


def test_every_memory_starts_from_an_rmt_backbone(source, tmp_path):
    src, _, _ = checkpointing.restore_for_inference(source)
    loss_rmt, rmt = start_from(source, tmp_path / "rmt")
    loss_armt, armt = start_from(source, tmp_path / "armt", "armt")
    _, rmt_r = start_from(source, tmp_path / "rmt_r", "rmt_r")
    _, full = start_from(source, tmp_path / "full", "full")
    for model in (rmt, armt, rmt_r, full):
        np.testing.assert_array_equal(model.wte[...], src.wte[...])
        np.testing.assert_array_equal(model.blocks[0].attn.qkv[...], src.blocks[0].attn.qkv[...])
        np.testing.assert_array_equal(model.ln_f.scale[...], src.ln_f.scale[...])
    np.testing.assert_array_equal(rmt.memory[...], src.memory[...])
    np.testing.assert_array_equal(armt.memory[...], src.memory[...])
    # RMT-R's official block learns 2N first-read rows: the first N are the source's
    n = src.memory[...].shape[0]
    assert rmt_r.memory[...].shape[0] == 2 * n
    np.testing.assert_array_equal(rmt_r.memory[...][:n], src.memory[...])
    assert not np.array_equal(rmt_r.memory[...][n:], src.memory[...])
    # ARMT's own layers start as a fresh ARMT's: W_v at zero, so nothing is stored at first
    assert np.all(np.asarray(armt.associative[0].wv[...]) == 0)
    assert getattr(full, "memory", None) is None  # no memory tokens
    # the full-attention window needs more learned positions: the source's rows, then fresh
    rows = src.wpe[...].shape[0]
    assert full.wpe[...].shape[0] > rows
    np.testing.assert_array_equal(full.wpe[...][:rows], src.wpe[...])
    assert np.isfinite(loss_rmt) and np.isfinite(loss_armt)


def test_a_resume_restores_its_own_checkpoint_not_the_source(source, tmp_path):
    """Learning rate 0 (nothing moves): after a resume whose init_from names another model,
    the parameters are still the first source's."""
    other = tmp_path / "other"
    train_lib.train_and_evaluate(smoke(num_steps=3, learning_rate=1e-2, seed=1), other)
    config = smoke("armt", num_steps=1, learning_rate=0.0)
    config.model.init_from = str(source)
    train_lib.train_and_evaluate(config, tmp_path / "run")
    config.train.num_steps = 2
    config.model.init_from = str(other)
    train_lib.train_and_evaluate(config, tmp_path / "run",
                                 allow_config_change=["train", "model.init_from"])
    model, _, step = checkpointing.restore_for_inference(tmp_path / "run")
    src, _, _ = checkpointing.restore_for_inference(source)
    assert step == 2
    np.testing.assert_array_equal(model.wte[...], src.wte[...])


def test_an_untied_head_starts_as_the_sources_tied_one(source, tmp_path):
    """A run with its own LM head (model.tied_head=False) from a tied source: the head starts
    as the source's token embedding, which was its head; it trains, saves and restores."""
    config = smoke(num_steps=1, learning_rate=0.0)
    config.model.init_from = str(source)
    config.model.tied_head = False
    train_lib.train_and_evaluate(config, tmp_path / "untied")
    model, _, _ = checkpointing.restore_for_inference(tmp_path / "untied")
    src, _, _ = checkpointing.restore_for_inference(source)
    assert model.config.tied_head is False
    np.testing.assert_array_equal(model.lm_head[...], src.wte[...])
    np.testing.assert_array_equal(model.wte[...], src.wte[...])
    checked = warm_start.open_checked(str(source), model.config, config)
    assert ("lm_head",) in checked.copied and ("lm_head",) not in checked.fresh


def test_an_exported_model_is_a_source_too(source, tmp_path):
    from launch.export_checkpoint import export

    export(str(source), str(tmp_path / "exported"), param_dtype="bfloat16")
    cfg = smoke("armt")
    model_config = train_lib.input_pipeline.model_config(cfg, cfg.model.vocab_size)
    ckpt = warm_start.open_checked(str(tmp_path / "exported"), model_config, cfg)
    assert ckpt.step == "best"
    assert ("associative", 0, "wv") in ckpt.fresh and ckpt.dropped == ()
    # ARMT has RMT's N memory rows; its position table N rows more, the write tokens' own
    assert model_config.write_positions == "own" and ckpt.partial == (("wpe",),)
    loss, model = start_from(tmp_path / "exported", tmp_path / "run", "armt")
    src, _, _ = checkpointing.restore_for_inference(source)
    bf16 = lambda x: np.asarray(x).astype("bfloat16").astype(np.float32)  # noqa: E731
    np.testing.assert_array_equal(model.wte[...], bf16(src.wte[...]))  # through bfloat16
    p = model_config.max_positions
    np.testing.assert_array_equal(model.wpe[...][:p], bf16(src.wpe[...]))
    fresh = RMT(model_config, rngs=nnx.Rngs(cfg.train.seed)).wpe[...][p:]
    np.testing.assert_allclose(model.wpe[...][p:], fresh, rtol=1e-5, atol=1e-7)  # as drawn
    assert np.isfinite(loss)


def check_error(config, match: str, workdir) -> None:
    with pytest.raises(ValueError, match=match):
        train_lib.train_and_evaluate(config, workdir)
    assert not (workdir / "config.json").exists()


def test_a_source_that_does_not_fit_stops_before_anything_is_written(source, tmp_path):
    config = smoke(num_steps=1)
    config.model.init_from = str(source)
    config.model.d_model = 48
    check_error(config, r"d_model: the checkpoint has 32, this run 48 "
                r"\(set --config.model.d_model=32\)", tmp_path / "a")
    config = smoke(num_steps=1)
    config.model.init_from = str(source)
    config.model.positions = "rope"
    check_error(config, "positions: the checkpoint has 'learned', this run 'rope'",
                tmp_path / "b")
    config = smoke(num_steps=1)
    config.model.init_from = str(source)
    config.model.vocab_size = 80
    check_error(config, "vocab_size: the checkpoint has 64, this run 80", tmp_path / "c")
    empty = tmp_path / "empty"
    empty.mkdir()
    for name in ("config.json", "model_config.json"):
        (empty / name).write_bytes((source / name).read_bytes())
    config = smoke(num_steps=1)
    config.model.init_from = str(empty)
    check_error(config, "holds no checkpoint", tmp_path / "d")


def test_another_tokenizer_is_refused(source, tmp_path):
    cfg = smoke()
    cfg.data.synthetic = False
    cfg.data.tokenizer = "gpt2"
    src_config, src_model = checkpointing.read_configs(source)
    src_config.data.synthetic = False
    src_config.data.tokenizer = "sentencepiece"
    folder = tmp_path / "src"
    (folder / "checkpoints" / "1").mkdir(parents=True)
    checkpointing.write_configs(folder, src_config, src_model)
    with pytest.raises(ValueError, match="tokenizer: the checkpoint was trained with "
                                         "'sentencepiece', this run uses 'gpt2'"):
        warm_start.open_checked(str(folder), src_model, cfg)


def test_launch_train_prints_an_error_line(source, tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "launch.train", "--config=configs/rmt_babilong.py:smoke,synthetic",
         f"--workdir={workdir}", f"--config.model.init_from={source}",
         "--config.model.heads=4"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "error: init_from=" in proc.stderr and "heads: the checkpoint has 2" in proc.stderr
    assert not (workdir / "config.json").exists()


@pytest.mark.parametrize("variant", ["rmt,warm", "rmt_r,warm", "armt,warm", "full,warm"])
def test_the_committed_backbone_fits_every_warm_arm(variant, monkeypatch):
    """configs/compare_qa1_cpu.py:VARIANT,warm names results/compare_qa1_cpu/warm/backbone,
    which holds a checkpoint every memory starts from."""
    from configs import compare_qa1_cpu
    from tests.test_configs import SP_VOCAB

    monkeypatch.chdir(REPO)
    config = compare_qa1_cpu.get_config(variant)
    model_config = train_lib.input_pipeline.model_config(config, SP_VOCAB)
    ckpt = warm_start.open_checked(config.model.init_from, model_config, config)
    assert ckpt.step == "best" and ckpt.model_config.memory == "rmt"
    assert ("blocks", 1, "mlp", "fc") in ckpt.copied
    assert ckpt.partial == ((("memory",),) if variant == "rmt_r,warm" else ())
