"""The shell launchers parse and print their usage; the GPU results script runs on a CPU."""

import os
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

    # XLA's optimisations off (as conftest.fast_compiles): compiling is most of this run
    env = dict(os.environ, BENCH="0", SMOKE="1", EVAL_LENGTHS="0k", EVAL_LONG="1M",
               EVAL_SAMPLES="2", PYTHON=sys.executable, JAX_DISABLE_MOST_OPTIMIZATIONS="1")
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
    # the device returns at most 8 plain files from $OUT (the benchmark's JSON is the 8th)
    assert all(p.is_file() for p in tmp_path.iterdir()) and len(list(tmp_path.iterdir())) <= 7


def test_gpu_perf_sweep_smoke_runs_the_profiled_baseline(tmp_path):
    """launch/gpu_perf_sweep.sh on a CPU (SMOKE=1) with no time for more than its first run:
    the profiled, HLO-dumping baseline, its table, and the other runs logged as skipped."""
    import json
    import os
    import sys

    env = dict(os.environ, SMOKE="1", SWEEP_SECONDS="1", PYTHON=sys.executable)
    # XLA dumps HLO when it compiles: a program from the session's cache (conftest) dumps none
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    done = subprocess.run(["bash", str(REPO / "launch/gpu_perf_sweep.sh"), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    log = (tmp_path / "perf_sweep.txt").read_text()
    assert done.returncode == 0, log[-3000:]
    (record,) = json.loads((tmp_path / "perf_sweep.json").read_text())
    assert record["tag"] == "infer_b1" and record["profile"]["events"] > 0
    assert "xla_dump_to" in record["xla_flags"]
    import tarfile

    with tarfile.open(tmp_path / "hlo_infer_b1.tar.gz") as tar:
        assert any(n.endswith("after_optimizations.txt") for n in tar.getnames())
    # at most 8 files come back from the device's $OUT: these are all plain files, and few
    assert all(p.is_file() for p in tmp_path.iterdir()) and len(list(tmp_path.iterdir())) <= 8
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


def _tpu_dry_run(*args):
    """launch/tpu_vm.sh with DRY_RUN=1, and a gcloud on PATH that fails if called: a dry
    run never reaches the real one (nor a cloud project)."""
    import tempfile

    with tempfile.TemporaryDirectory() as bin_dir:
        fake = os.path.join(bin_dir, "gcloud")
        with open(fake, "w") as f:
            f.write("#!/bin/sh\necho 'a dry run called gcloud' >&2\nexit 97\n")
        os.chmod(fake, 0o755)
        env = dict(os.environ, DRY_RUN="1", PATH=f"{bin_dir}:{os.environ['PATH']}")
        return subprocess.run(["bash", str(REPO / "launch/tpu_vm.sh"), *args], env=env,
                              capture_output=True, text=True, timeout=60)


def test_tpu_vm_job_is_detached_reads_gcs_data_and_says_how_to_watch_and_stop():
    done = _tpu_dry_run("rmt-v4", "us-central2-b", "v4-32", "configs/rmt_babilong.py:tiny,qa1",
                        "gs://bucket/run", "--config.train.steps=5")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    commands = [line for line in out.splitlines() if line.startswith("+ gcloud")]
    # The data goes to GCS once from here; no worker gets it by scp.
    assert any("storage rsync --recursive" in c and "gs://bucket/run/data/babi" in c
               for c in commands)
    assert not any("scp" in c and "--recurse" in c for c in commands)
    assert 'gcloud storage rsync --recursive gs://bucket/run/data "$HOME/shared_data"' in out
    # Detached in its own session; its log under the workdir, per worker.
    assert 'setsid nohup bash "$JOB/run.sh" >"$LOG"' in out
    assert "REMOTE_LOG=gs://bucket/run/logs/worker-$WORKER.log" in out
    assert "launch/tpu_vm.sh watch rmt-v4 us-central2-b" in out
    assert "launch/tpu_vm.sh stop rmt-v4 us-central2-b" in out
    assert commands[-1].endswith("--worker=all --command=bash\\ \\$HOME/rmt_job/start.sh")
    stop = _tpu_dry_run("stop", "rmt-v4", "us-central2-b")
    assert stop.returncode == 0 and "--worker=all" in stop.stdout
    assert "kill\\ -TERM\\ --\\ -\\$\\(cat\\ \\$HOME/rmt_job/pid\\)" in stop.stdout
    watch = _tpu_dry_run("watch", "rmt-v4", "us-central2-b", "2")
    assert "--worker=2" in watch.stdout and "tail" in watch.stdout


def test_tpu_vm_run_script_passes_the_flags_through(tmp_path):
    """The worker's run.sh, run here with a stand-in python that prints its arguments."""
    done = _tpu_dry_run("n", "z", "v4-8", "configs/rmt_babilong.py:tiny,qa1", "gs://b/w/",
                        "--config.train.steps=5", "--config.name=a b", "--x=$HOME")
    run_sh = done.stdout.split("# which starts run.sh:\n", 1)[1].split("\n+ gcloud", 1)[0]
    (tmp_path / "rmt").mkdir()
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "activate").write_text('python() { printf "%s\\n" "$@"; }\n')
    (tmp_path / "run.sh").write_text(run_sh)
    out = subprocess.run(["bash", str(tmp_path / "run.sh")],
                         env=dict(os.environ, HOME=str(tmp_path)), capture_output=True,
                         text=True, timeout=60).stdout.splitlines()
    assert out == ["-m", "launch.train", "--multihost",
                   "--config=configs/rmt_babilong.py:tiny,qa1", "--workdir=gs://b/w",
                   f"--config.data.babi_dir={tmp_path}/shared_data/babi",
                   f"--config.data.haystack_dir={tmp_path}/shared_data/haystack",
                   "--config.train.steps=5", "--config.name=a b", "--x=$HOME", "exit status 0"]


def test_tpu_vm_refuses_a_local_workdir():
    done = _tpu_dry_run("n", "z", "v4-8", "configs/rmt_babilong.py:tiny,qa1", "/tmp/local")
    assert done.returncode == 2 and done.stderr.startswith("error: WORKDIR must be a gs://")
