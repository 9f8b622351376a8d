"""launch.plot_training: merged metrics of resumed pieces, stage changes, the PNG."""

import json

import pytest

from launch import plot_training


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_curve_of_a_resumed_run(tmp_path):
    first = write(tmp_path / "a.jsonl", [
        {"step": 100, "train/loss": 2.0, "train/accuracy": 0.4, "train/stage": 0,
         "train/segments": 0},
        {"step": 200, "train/loss": 1.0, "train/accuracy": 0.7, "train/stage": 0,
         "train/segments": 0},
        {"step": 200, "eval/qa1/0k/accuracy": 0.5},
        {"step": 300, "train/loss": 0.9, "train/accuracy": 0.7, "train/stage": 1,
         "train/segments": 1},
    ])
    # the resumed piece redoes step 300 (after a checkpoint at 200) and goes on
    second = write(tmp_path / "b.jsonl", [
        {"step": 300, "train/loss": 0.8, "train/accuracy": 0.75, "train/stage": 1,
         "train/segments": 1},
        {"step": 400, "train/loss": 0.5, "train/accuracy": 0.9, "train/stage": 2,
         "train/segments": 2},
        {"step": 400, "eval/qa1/0k/accuracy": 0.9, "eval/qa1/1k/accuracy": 0.6},
    ])
    rows = plot_training.read_metrics([first, second])
    assert list(rows) == [100, 200, 300, 400]
    assert rows[300]["train/loss"] == 0.8  # the later file wins
    assert rows[200]["eval/qa1/0k/accuracy"] == 0.5 and rows[200]["train/loss"] == 1.0
    assert plot_training.stage_changes(rows) == [(100, 0, 0.0), (300, 1, 1.0), (400, 2, 2.0)]
    out = tmp_path / "curve.png"
    plot_training.plot(rows, out, title="test")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_bad_metrics_say_where(tmp_path):
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"step": 1, "train/loss": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"m.jsonl:2 is not a metrics line"):
        plot_training.read_metrics([bad])
    write(bad, [{"step": 1, "eval/qa1/0k/accuracy": 0.5}])
    with pytest.raises(ValueError, match="no train/loss"):
        plot_training.plot(plot_training.read_metrics([bad]), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_command_line(tmp_path):
    import subprocess
    import sys

    from .conftest import REPO

    metrics = write(tmp_path / "metrics.jsonl", [
        {"step": 10, "train/loss": 1.0, "train/accuracy": 0.5, "train/stage": 0,
         "train/segments": 0}])
    run = [sys.executable, "-m", "launch.plot_training"]
    out = subprocess.run(run + [f"--workdir={tmp_path}", f"--out={tmp_path / 'c.png'}"],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG" and metrics.exists()
    bad = subprocess.run(run + [f"--workdir={tmp_path / 'none'}", f"--out={tmp_path / 'd.png'}"],
                         cwd=REPO, capture_output=True, text=True)
    assert bad.returncode != 0 and "no metrics file" in bad.stderr
    assert not (tmp_path / "d.png").exists()
