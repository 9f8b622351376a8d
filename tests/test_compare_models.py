"""launch.compare_models: one heatmap with a row per run and the published rows."""

import json
import subprocess
import sys

import numpy as np
import pytest

from babilong_tfds import leaderboard
from rmt_jax import evaluate_lib

from .conftest import REPO


def results(cells: dict) -> dict:
    return {"results": {"qa1": {n: {"accuracy": a} for n, a in cells.items()}},
            "meta": {"lengths": list(cells)}}


def test_comparison_grid_rows_runs_then_published():
    runs = {"RMT": results({"0k": 0.81, "4k": 0.43}), "ARMT": results({"0k": 0.9})}
    grid, names = evaluate_lib.comparison_grid(runs, "qa1", ["0k", "4k", "1M"],
                                               leaderboard.published("qa1"))
    assert names[:2] == ["RMT", "ARMT"] and names[2] == "RMT (GPT-2, fine-tuned)"
    np.testing.assert_allclose(grid[0], [81, 43, np.nan])
    np.testing.assert_allclose(grid[1], [90, np.nan, np.nan])
    np.testing.assert_allclose(grid[names.index("GPT-4-0125")], [99, 95, np.nan])
    with pytest.raises(ValueError, match="run 'RMT' has no results for qa2"):
        evaluate_lib.comparison_grid(runs, "qa2", ["0k"])
    with pytest.raises(ValueError, match="no published rows for 'qa7'"):
        leaderboard.published("qa7")


def test_cli_writes_json_and_heatmap_and_rejects_a_missing_file(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(results({"0k": 0.5, "4k": 0.25})))
    (tmp_path / "a_1m.json").write_text(json.dumps(results({"1M": 0.2})))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "launch.compare_models", f"--run=A={tmp_path / 'a.json'}",
           f"--run=A={tmp_path / 'a_1m.json'}", "--lengths=0k,4k,1M", f"--out_dir={out}"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((out / "comparison.json").read_text())
    assert record["rows"][0] == "A" and record["accuracy"][0] == [50.0, 25.0, 20.0]
    assert len(record["rows"]) == 1 + len(leaderboard.QA1)
    assert (out / "heatmap.png").stat().st_size > 1000
    assert "A" in done.stdout and "GPT-4-0125" in done.stdout
    missing = subprocess.run([*cmd[:4], f"--run=B={tmp_path / 'none.json'}",
                              f"--out_dir={tmp_path / 'out2'}"], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1].startswith("error: --run='B=")
    assert not (tmp_path / "out2").exists()
