"""Run paths: a gs:// workdir stays remote (etils.epath, mocked to a local folder here), a
missing backend or a bad workdir is a clear error, result files respect the umask."""

import contextlib
import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from etils import epath

from rmt_jax import checkpointing, files, metric_writer, train_lib
from tests.test_train_lib import tiny_config

REPO = Path(__file__).resolve().parents[1]
RUN = {"train.num_steps": 3, "train.checkpoint_every": 1, "train.log_every": 1,
       "eval.every": 0, "train.answer_rows": 0, "curriculum.segments": (1,)}
MOCKED = ("open", "exists", "isdir", "listdir", "makedirs", "mkdir", "remove", "rmtree",
          "stat")
MOCKED_PAIRS = ("rename", "replace", "copy")


@contextlib.contextmanager
def fake_gcs(root: Path, seen: list[str]):
    """epath's gs:// backend replaced by a local folder: gs://bucket/x -> root/bucket/x.
    Every path the backend is asked for is recorded in `seen`."""

    def local(path) -> str:
        text = os.fspath(path)
        seen.append(text)
        return str(root / text[len("gs://"):]) if text.startswith("gs://") else text

    def one(fn, path, *args, **kwargs):
        return fn(local(path), *args, **kwargs)

    def two(fn, path, dst, *args, **kwargs):
        return fn(local(path), local(dst), *args, **kwargs)

    mocks = {name: one for name in MOCKED} | {name: two for name in MOCKED_PAIRS}
    with epath.testing.mock_epath(**mocks):
        yield


class LocalCheckpointer(checkpointing.Checkpointer):
    """Orbax writes arrays through tensorstore, which would reach the real bucket: point the
    checkpoints at the fake bucket's folder instead."""

    root: Path

    def __init__(self, workdir, **kwargs):
        text = os.fspath(workdir)
        assert text.startswith("gs://"), f"the checkpointer got a local path: {text}"
        super().__init__(self.root / text[len("gs://"):], **kwargs)


def test_run_paths_keep_uris_and_make_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert os.fspath(files.run_path("gs://bucket/run")) == "gs://bucket/run"
    assert os.fspath(files.run_path("gs://bucket/run") / "config.json") == \
        "gs://bucket/run/config.json"
    assert os.fspath(files.run_path("runs/a")) == str(tmp_path / "runs" / "a")
    with pytest.raises(ValueError, match=r"memory:// paths are not supported"):
        files.run_path("memory://run")


@pytest.mark.skipif(any(importlib.util.find_spec(m) for m in ("gcsfs", "tensorflow")),
                    reason="a gs:// backend is installed here")
def test_a_missing_gs_backend_is_a_clear_error_at_start():
    with pytest.raises(ValueError, match=r"gs:// paths needs gcsfs"):
        train_lib.train_and_evaluate(tiny_config(RUN), "gs://bucket/run")


def test_training_in_a_gs_workdir_never_makes_a_local_path(tmp_path, monkeypatch):
    bucket, cwd, seen = tmp_path / "fake_gcs", tmp_path / "cwd", []
    (bucket / "bucket").mkdir(parents=True)
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(LocalCheckpointer, "root", bucket, raising=False)
    monkeypatch.setattr(checkpointing, "Checkpointer", LocalCheckpointer)
    monkeypatch.setattr(metric_writer, "TENSORBOARD_SCHEMES", (None,))  # no real GCS client
    with fake_gcs(bucket, seen):
        out = train_lib.train_and_evaluate(tiny_config(RUN), "gs://bucket/run")
        assert out["step"] == 3
        # resuming reads the remote config and metrics, and appends to the metrics
        config = tiny_config({**RUN, "train.num_steps": 5})
        with pytest.raises(ValueError, match="train.num_steps 3 -> 5"):
            train_lib.train_and_evaluate(config, "gs://bucket/run")
        out = train_lib.train_and_evaluate(config, "gs://bucket/run",
                                           allow_config_change=["train.num_steps"])
        assert out["step"] == 5
    run = bucket / "bucket" / "run"
    assert json.loads((run / "config.json").read_text())["train"]["num_steps"] == 5
    assert json.loads((run / "model_config.json").read_text())["d_model"] == 32
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["3", "4", "5"]
    assert list(cwd.iterdir()) == []  # no ./gs:/bucket/run
    assert not list(tmp_path.rglob("gs:*"))
    # the backend was asked for gs://bucket/run/..., never for a mangled 'gs:/bucket/run'
    assert any(p.startswith("gs://bucket/run/") for p in seen)
    assert all(p.startswith("gs://bucket/run") for p in seen if "gs:" in p)


def test_atomic_write_to_a_gs_path_goes_through_epath(tmp_path, monkeypatch):
    bucket, seen = tmp_path / "fake_gcs", []
    (bucket / "bucket" / "eval").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with fake_gcs(bucket, seen):
        files.write_text("gs://bucket/eval/results.json", "{}\n")
        with pytest.raises(RuntimeError):
            files.atomic_write("gs://bucket/eval/results.json",
                               lambda tmp: (Path(tmp).write_text("partial"),
                                            _raise(RuntimeError("midway"))))
    assert [p.name for p in (bucket / "bucket" / "eval").iterdir()] == ["results.json"]
    assert (bucket / "bucket" / "eval" / "results.json").read_text() == "{}\n"


def _raise(error):
    raise error


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_result_files_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        files.write_text(tmp_path / "results.json", "{}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_an_unwritable_workdir_is_a_value_error(tmp_path):
    def refuse(fn, path, mode, *args, **kwargs):
        if "w" in mode:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return fn(path, mode, *args, **kwargs)

    with epath.testing.mock_epath(open=refuse), pytest.raises(ValueError, match="cannot write"):
        train_lib.train_and_evaluate(tiny_config(RUN), tmp_path / "run")
    assert [p.name for p in (tmp_path / "run").iterdir()] == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only folders")
def test_a_read_only_workdir_is_a_value_error(tmp_path):
    (tmp_path / "run").mkdir(mode=0o555)
    with pytest.raises(ValueError, match="cannot write"):
        train_lib.train_and_evaluate(tiny_config(RUN), tmp_path / "run")


def test_entry_points_give_error_lines_not_tracebacks(tmp_path):
    (tmp_path / "a_file").write_text("")
    runs = {
        "workdir is a file": ["launch.train", "--config=configs/rmt_babilong.py:smoke,synthetic",
                              f"--workdir={tmp_path / 'a_file'}"],
        "workdir inside a file": ["launch.train",
                                  "--config=configs/rmt_babilong.py:smoke,synthetic",
                                  f"--workdir={tmp_path / 'a_file' / 'run'}"],
        "log_every=0": ["launch.train", "--config=configs/rmt_babilong.py:smoke,synthetic",
                        "--config.train.log_every=0", f"--workdir={tmp_path / 'run'}"],
        "heads=3": ["launch.train", "--config=configs/rmt_babilong.py:smoke,synthetic",
                    "--config.model.heads=3", f"--workdir={tmp_path / 'run'}"],
        "segments=0": ["launch.benchmark_rmt", "--preset=test", "--segments=0"],
        "batch=0": ["launch.benchmark_rmt", "--preset=test", "--batch=0"],
    }
    for name, args in runs.items():
        done = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=300)
        lines = done.stderr.strip().splitlines()
        assert done.returncode != 0, name
        assert lines and lines[-1].startswith("error: "), (name, done.stderr[-2000:])
        assert "Traceback" not in done.stderr, name
    assert not (tmp_path / "run").exists()  # nothing made before the config was checked
