"""Checkpoints: exact resume after SIGKILL and SIGTERM (which saves first and exits 0),
fallback from corruption."""

import json
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
from tests.test_train_lib import saved_steps, subprocess_env, tiny_config

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("fast_compiles")
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
def env(fast_compiles):
    return subprocess_env()  # with fast_compiles' setting


def launch(workdir: Path, env: dict, *extra: str) -> subprocess.Popen:
    log = (workdir.parent / f"{workdir.name}.log").open("a")
    return subprocess.Popen([sys.executable, "-m", "launch.train", *RUN_FLAGS, *extra,
                             f"--workdir={workdir}"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=log)


def final_params(workdir: Path):
    model, _, step = checkpointing.restore_for_inference(workdir)
    assert step == NUM_STEPS
    return jax.tree.leaves(jax.tree.map(np.asarray, nnx.state(model, nnx.Param)))


def logged_step(workdir: Path) -> int:
    """The newest step in a workdir's metrics (0: none yet)."""
    path = workdir / metric_writer.METRICS_FILE
    lines = path.read_text().splitlines() if path.exists() else []
    return max((json.loads(line)["step"] for line in lines if line.endswith("}")), default=0)


def wait_for(done, proc: subprocess.Popen, log: Path) -> None:
    """Polls `done()` while `proc` runs (it must not end first)."""
    deadline = time.time() + 240
    while not done():
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.01)


def test_sigkill_then_sigterm_at_random_steps_then_resume_is_bitwise_exact(tmp_path, env):
    """Killed (SIGKILL) in stage 0, preempted (SIGTERM) in stage 1, resumed to the end:
    bitwise the parameters of an uninterrupted run. SIGTERM saves the step it stopped at
    (the only checkpoint of a run whose checkpoint_every is 100000) and exits 0."""
    reference = tmp_path / "reference"
    assert launch(reference, env).wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()
    rng = np.random.default_rng()
    kill_at, term_at = int(rng.integers(2, 7)), int(rng.integers(9, 14))
    resumed, log = tmp_path / "resumed", tmp_path / "resumed.log"

    proc = launch(resumed, env)
    wait_for(lambda: (saved_steps(resumed) or [0])[-1] >= kill_at, proc, log)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = saved_steps(resumed)[-1]

    proc = launch(resumed, env, "--config.train.checkpoint_every=100000",
                  "--config.train.log_every=1")
    wait_for(lambda: logged_step(resumed) >= term_at, proc, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    stopped = logged_step(resumed)
    assert f"resumed from step {killed}" in log.read_text()
    assert f"stopped at step {stopped} after a preemption signal" in log.read_text()
    assert killed < stopped < NUM_STEPS
    assert saved_steps(resumed) == [killed, stopped]  # SIGTERM saved; nothing periodic did
    _, _, restored = checkpointing.restore_for_inference(resumed)
    assert restored == stopped

    assert launch(resumed, env).wait(timeout=300) == 0, log.read_text()[-3000:]
    assert f"resumed from step {stopped}" in log.read_text()
    kills = f"SIGKILL at step {killed}, SIGTERM at step {stopped}"
    for a, b in zip(final_params(reference), final_params(resumed), strict=True):
        assert np.array_equal(a, b), f"params differ after {kills}"


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
