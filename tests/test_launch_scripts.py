"""The shell launchers parse, and print their usage when arguments are missing."""

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
