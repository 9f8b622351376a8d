"""The shell launchers parse and print their usage; the GPU results script runs on a CPU."""

import subprocess

import pytest

from .conftest import REPO


@pytest.mark.parametrize("script", ["launch/tpu_vm.sh", "launch/gpu.sh", "launch/gpu_results.sh",
                                    "launch/gpu_perf_sweep.sh"])
def test_launcher_syntax_and_usage(script):
    path = REPO / script
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    out = subprocess.run(["bash", str(path)], capture_output=True, text=True)
    assert out.returncode == 2 and script.split("/")[1] in out.stderr


def test_gpu_results_smoke_trains_exports_and_evaluates(tmp_path, babi_root, haystack_dir):
    """launch/gpu_results.sh end to end on a CPU (SMOKE=1, benchmarks skipped): the
    curriculum of configs/qa1_gpu.py, the export, a batched and a streamed (1M) evaluation."""
    import json
    import os
    import sys

    env = dict(os.environ, BENCH="0", SMOKE="1", EVAL_LENGTHS="0k", EVAL_LONG="1M",
               EVAL_SAMPLES="2", PYTHON=sys.executable)
    done = subprocess.run(["bash", str(REPO / "launch/gpu_results.sh"), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    log = (tmp_path / "log.txt").read_text()
    assert done.returncode == 0, log[-3000:]
    assert "train exited with 0" in log  # 15 steps, done before the time limit
    metrics = (tmp_path / "train_metrics.jsonl").read_text()
    rows = [json.loads(line) for line in metrics.splitlines()]
    assert max(r.get("train/stage", 0) for r in rows) == 2  # through every curriculum stage
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["results"]["qa1"]) == {"0k", "1M"}
    assert all(cell["count"] == 2 for cell in results["results"]["qa1"].values())
    assert (tmp_path / "checkpoint.tar.gz").stat().st_size > 0
    assert (tmp_path / "heatmap.png").exists()


def test_gpu_perf_sweep_smoke_runs_the_profiled_baseline(tmp_path):
    """launch/gpu_perf_sweep.sh on a CPU (SMOKE=1) with no time for more than its first run:
    the profiled, HLO-dumping baseline, its table, and the other runs logged as skipped."""
    import json
    import os
    import sys

    env = dict(os.environ, SMOKE="1", SWEEP_SECONDS="1", PYTHON=sys.executable)
    done = subprocess.run(["bash", str(REPO / "launch/gpu_perf_sweep.sh"), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    log = (tmp_path / "perf_sweep.txt").read_text()
    assert done.returncode == 0, log[-3000:]
    (record,) = json.loads((tmp_path / "perf_sweep.json").read_text())
    assert record["tag"] == "infer_b1" and record["profile"]["events"] > 0
    assert "xla_dump_to" in record["xla_flags"]
    assert list((tmp_path / "hlo_infer_b1").glob("*after_optimizations.txt"))
    assert "skipped (SWEEP_SECONDS=1): infer_b1_unroll4" in log
    # the table: the baseline against itself
    assert any(line.startswith("infer_b1 ") and "1.00x" in line for line in log.splitlines())


def test_top_level_layout_of_the_design_card():
    """rmt_jax/ babilong_tfds/ configs/ launch/ tests/ setup.py README.md, setup.py a shim
    over pyproject.toml (whose SPDX license string needs setuptools 77)."""
    for name in ("rmt_jax", "babilong_tfds", "configs", "launch", "tests"):
        assert (REPO / name).is_dir(), name
    for name in ("setup.py", "README.md", "pyproject.toml"):
        assert (REPO / name).is_file(), name
    assert "setup()" in (REPO / "setup.py").read_text()
    assert '"setuptools>=77"' in (REPO / "pyproject.toml").read_text()
