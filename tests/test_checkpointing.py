"""Checkpoints: exact resume after SIGKILL, clean stop on SIGTERM, fallback from corruption."""

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from rmt_jax import checkpointing, metric_writer, train_lib
from tests.test_train_lib import kill_and_resume, saved_steps, subprocess_env, tiny_config

REPO = Path(__file__).resolve().parents[1]
NUM_STEPS = 24
# Dropout and a stage change at step 8 make the resume depend on the saved RNG, curriculum
# and data iterator state.
RUN_FLAGS = ("--config=configs/rmt_babilong.py:smoke,synthetic",
             f"--config.train.num_steps={NUM_STEPS}", "--config.train.checkpoint_every=1",
             "--config.train.keep_checkpoints=2", "--config.train.log_every=4",
             "--config.train.answer_rows=2", "--config.eval.every=0",
             "--config.curriculum.segments=(1,2)", "--config.curriculum.stage_steps=8",
             "--config.model.dropout=0.1")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return subprocess_env(tmp_path_factory.mktemp("jax_cache"))


def launch(workdir: Path, env: dict, *extra: str) -> subprocess.Popen:
    log = (workdir.parent / f"{workdir.name}.log").open("a")
    return subprocess.Popen([sys.executable, "-m", "launch.train", *RUN_FLAGS, *extra,
                             f"--workdir={workdir}"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=log)


def final_params(workdir: Path):
    model, _, step = checkpointing.restore_for_inference(workdir)
    assert step == NUM_STEPS
    return jax.tree.leaves(jax.tree.map(np.asarray, nnx.state(model, nnx.Param)))


def test_sigkill_at_random_steps_then_resume_is_bitwise_exact(tmp_path, env):
    reference = tmp_path / "reference"
    assert launch(reference, env).wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()
    rng = np.random.default_rng()
    targets = [int(rng.integers(2, 7)), int(rng.integers(9, 16))]
    resumed = tmp_path / "resumed"
    kills = kill_and_resume(lambda workdir: launch(workdir, env), resumed, targets,
                            tmp_path / "resumed.log")
    assert kills, "the run finished before any kill: make it longer"
    for a, b in zip(final_params(reference), final_params(resumed), strict=True):
        assert np.array_equal(a, b), f"params differ after kills at steps {kills}"


def test_sigterm_saves_and_exits_cleanly_then_resumes(tmp_path, env, caplog):
    workdir = tmp_path / "run"
    proc = launch(workdir, env, "--config.train.num_steps=100000",
                  "--config.train.checkpoint_every=100000", "--config.train.log_every=2")
    deadline = time.time() + 240
    while not (workdir / metric_writer.METRICS_FILE).exists():
        assert proc.poll() is None and time.time() < deadline, "training did not start"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    (step,) = saved_steps(workdir)
    assert 2 <= step < 100000
    _, _, restored = checkpointing.restore_for_inference(workdir)
    assert restored == step
    config = tiny_config({"train.num_steps": step + 2, "train.checkpoint_every": 100000,
                          "train.keep_checkpoints": 2, "train.log_every": 2,
                          "train.answer_rows": 2, "eval.every": 0,
                          "curriculum.segments": (1, 2), "curriculum.stage_steps": 8,
                          "model.dropout": 0.1})
    with caplog.at_level(logging.INFO):
        out = train_lib.train_and_evaluate(config, workdir,
                                           allow_config_change=["train.num_steps"])
    assert f"resumed from step {step}" in caplog.text
    assert out["step"] == step + 2 and saved_steps(workdir)[-1] == step + 2


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    config = tiny_config({"train.num_steps": 4, "train.checkpoint_every": 1, "eval.every": 0,
                          "train.answer_rows": 0, "curriculum.segments": (1,)})
    train_lib.train_and_evaluate(config, tmp_path)
    assert saved_steps(tmp_path) == [2, 3, 4]
    for path in (tmp_path / checkpointing.LATEST_DIR / "4").rglob("*"):
        if path.is_file():
            path.write_bytes(b"\x00garbage")
    config.train.num_steps = 6
    with caplog.at_level(logging.INFO):
        out = train_lib.train_and_evaluate(config, tmp_path,
                                           allow_config_change=["train.num_steps"])
    assert "step 4" in caplog.text and "does not load" in caplog.text
    assert "resumed from step 3" in caplog.text
    assert (tmp_path / checkpointing.CORRUPT_DIR / "checkpoints_4").is_dir()
    assert out["step"] == 6 and saved_steps(tmp_path)[-1] == 6


def test_restore_for_inference_explains_missing_things(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        checkpointing.restore_for_inference(tmp_path)
    config = tiny_config({"train.num_steps": 2, "eval.every": 0, "train.answer_rows": 0,
                          "curriculum.segments": (1,)})
    train_lib.train_and_evaluate(config, tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint at step 7"):
        checkpointing.restore_for_inference(tmp_path, step=7)
    with pytest.raises(FileNotFoundError, match="best"):
        checkpointing.restore_for_inference(tmp_path, step="best")
