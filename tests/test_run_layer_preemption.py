"""launch.train under preemption and in its log: SIGTERM during a long evaluation leaves a
checkpoint within seconds; the log has an ETA and none of orbax's per-save INFO lines."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orbax.checkpoint
import pytest

from rmt_jax import checkpointing, metric_writer, run_control
from tests.test_train_lib import subprocess_env

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("fast_compiles")
BASE = ("--config=configs/rmt_babilong.py:smoke,synthetic", "--config.curriculum.segments=(1,)",
        "--config.train.answer_rows=0")


@pytest.fixture(scope="module")
def env(fast_compiles):
    return subprocess_env()  # with fast_compiles' setting


def logged_steps(workdir: Path) -> list[dict]:
    path = workdir / metric_writer.METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_sigterm_during_a_long_evaluation_saves_within_seconds(tmp_path, env):
    workdir = tmp_path / "run"
    # Evaluation at step 3 over a million held-out samples: minutes of work.
    flags = [*BASE, "--config.train.num_steps=100000", "--config.train.log_every=1",
             "--config.train.checkpoint_every=100000", "--config.eval.every=3",
             "--config.eval.num_samples=1000000", f"--workdir={workdir}"]
    log = tmp_path / "train.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "launch.train", *flags], cwd=REPO,
                                env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            deadline = time.time() + 240
            while not any(r["step"] == 3 for r in logged_steps(workdir)):
                assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
                time.sleep(0.05)
            # the step-3 evaluation is running now: compiled, inside its loop of batches (a
            # signal that lands while XLA compiles waits for the compile to return)
            time.sleep(5.0)
            assert not (workdir / checkpointing.LATEST_DIR / "3").exists()
            proc.send_signal(signal.SIGTERM)
            signalled = time.time()
            while not (workdir / checkpointing.LATEST_DIR / "3").exists():
                assert time.time() - signalled < 15, "no checkpoint 15 s after SIGTERM"
                time.sleep(0.05)
            saved_after = time.time() - signalled
            assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    print(f"checkpoint on disk {saved_after:.2f} s after SIGTERM")
    assert saved_after < 15
    assert "SIGTERM during evaluation" in log.read_text()
    assert not any("eval/exact_match" in r for r in logged_steps(workdir))  # interrupted
    _, _, step = checkpointing.restore_for_inference(workdir)
    assert step == 3


def test_log_has_an_eta_and_no_orbax_info_lines(tmp_path, env):
    workdir = tmp_path / "run"
    flags = [*BASE, "--config.train.num_steps=4", "--config.train.log_every=2",
             "--config.train.checkpoint_every=1", "--config.eval.every=0",
             f"--workdir={workdir}"]
    done = subprocess.run([sys.executable, "-m", "launch.train", *flags], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(int(p.name) for p in (workdir / checkpointing.LATEST_DIR).iterdir()) == [
        2, 3, 4]
    orbax_files = {p.name for p in Path(orbax.checkpoint.__file__).parent.rglob("*.py")}
    info = [line for line in done.stderr.splitlines() if line.startswith("I")]
    orbax_info = [line for line in info if any(f" {name}:" in line for name in orbax_files)]
    assert not orbax_info, orbax_info[:3]
    progress = [line for line in info if "train/loss" in line]
    assert len(progress) == 2
    assert all("ETA " in line for line in progress)
    assert "step 4/4, ETA 0s" in progress[-1]


def test_stop_signal_interrupts_an_evaluation_at_its_next_stop_point_also_when_it_came_before():
    stop = run_control.StopSignal()
    reached = []
    try:
        with pytest.raises(run_control.Preempted):
            with stop.interruptible():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.1)  # the handler only sets the flag: nothing raises here
                reached.append(stop.received)
                run_control.stop_point()  # between two batches: raises
                pytest.fail("stop_point() let the evaluation go on after SIGTERM")
    finally:
        stop.restore()
    assert reached == [True]
    run_control.stop_point()  # outside an evaluation: nothing to stop
    stop = run_control.StopSignal()
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # between the step and the evaluation: a flag
        assert stop.received
        run_control.stop_point()  # not inside an evaluation: the loop saves after the step
        with pytest.raises(run_control.Preempted):
            with stop.interruptible():
                pytest.fail("an evaluation started after SIGTERM")
    finally:
        stop.restore()
