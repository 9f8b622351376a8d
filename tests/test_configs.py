"""Every config in configs/ loads, builds a ModelConfig and a model, and rejects typos."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from flax import nnx

from rmt_jax import input_pipeline
from rmt_jax.core.model import RMT
from rmt_jax.curriculum import Curriculum

REPO = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(p for p in (REPO / "configs").glob("*.py") if p.name != "__init__.py")
SP_VOCAB = 8192  # the shipped sentencepiece model: no need to load it to build shapes


def variants():
    for path in CONFIG_FILES:
        module = importlib.import_module(f"configs.{path.stem}")
        if not hasattr(module, "VARIANTS"):
            raise AssertionError(f"{path} has no VARIANTS tuple listing its variants")
        for variant in module.VARIANTS:
            yield pytest.param(module, variant, id=f"{path.stem}:{variant}")


@pytest.mark.parametrize(("module", "variant"), list(variants()))
def test_config_loads_and_builds(module, variant):
    config = module.get_config(variant)
    model_config = input_pipeline.model_config(config, config.model.vocab_size or SP_VOCAB)
    Curriculum.from_config(config)
    model = nnx.eval_shape(lambda: RMT(model_config, rngs=nnx.Rngs(0)))
    assert model.wte.shape == (model_config.vocab_size, model_config.d_model)
    assert config.train.batch_size % max(config.mesh.data, 1) == 0
    assert config.data.synthetic or config.model.vocab_size == 0


def test_configs_cover_rmt_and_rmt_r_on_qa1_to_qa5_and_every_memory():
    from configs import rmt_babilong

    built = [rmt_babilong.get_config(v) for v in rmt_babilong.VARIANTS]
    for memory in ("rmt", "rmt_r"):
        tasks = {t for c in built if c.model.memory == memory
                 for t in c.data.tasks.split(",")}
        assert {"qa1", "qa2", "qa3", "qa4", "qa5"} <= tasks
    assert {c.model.memory for c in built} == {"rmt", "rmt_r", "armt", "none"}
    assert any(c.model.d_model == 768 and c.model.layers == 12 for c in built)
    armt = rmt_babilong.get_config("gpt2_small,qa1,armt")
    assert armt.model.d_mem == 64  # the published ARMT's
    full = rmt_babilong.get_config("quick,qa1,full")
    assert full.model.mem_tokens == 0 and full.model.max_positions == 32 * 32


def test_locked_config_rejects_misspelt_field():
    from configs import rmt_babilong

    config = rmt_babilong.get_config("smoke,synthetic")
    with pytest.raises(AttributeError):
        config.optim.learnig_rate = 1
    config.optim.learning_rate = 1.0  # existing fields can be overridden


PARSE = """
import sys
from absl import flags
from ml_collections import config_flags
config = config_flags.DEFINE_config_file("config", lock_config=True)
flags.FLAGS(sys.argv)
print(config.value.optim.learning_rate)
"""


@pytest.mark.parametrize(("override", "ok"), [("learning_rate=0.5", True),
                                              ("learnig_rate=1", False)])
def test_config_flags_command_line_override(override, ok):
    proc = subprocess.run(
        [sys.executable, "-c", PARSE, "--config=configs/rmt_babilong.py:smoke,synthetic",
         f"--config.optim.{override}"], cwd=REPO, capture_output=True, text=True, timeout=60)
    if ok:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "0.5"
    else:
        assert proc.returncode != 0
        assert "learnig_rate" in proc.stderr


def test_launcher_rejects_misspelt_override(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "launch.train", "--config=configs/rmt_babilong.py:smoke,synthetic",
         f"--workdir={tmp_path}", "--config.optim.learnig_rate=1"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "learnig_rate" in proc.stderr
    assert not (tmp_path / "config.json").exists()


def test_trainer_sizes_are_the_model_presets():
    """One table of sizes: every preset is a trainer size with the same model fields."""
    from configs import rmt_babilong
    from rmt_jax.core.config import PRESETS

    assert rmt_babilong.SIZES == tuple(PRESETS)
    for name, preset in PRESETS.items():
        model = rmt_babilong.get_config(f"{name},qa1").model
        for field in ("layers", "d_model", "heads", "segment_len", "mem_tokens", "max_positions"):
            assert model[field] == getattr(preset, field), (name, field)
