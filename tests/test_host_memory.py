"""rmt_jax.host_memory: glibc keeps XLA:CPU's large per-call blocks, unless turned off."""

import subprocess
import sys

import pytest

from .conftest import REPO

SCRIPT = """
import ctypes, sys
from rmt_jax import host_memory
first = host_memory.keep()
assert host_memory.keep() is first  # once per process
print(first)
"""


def run(env_value):
    env = {"PATH": "", "RMT_KEEP_HOST_MEMORY": env_value, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux")
def test_keep_applies_once_and_can_be_turned_off():
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").gnu_get_libc_version  # noqa: B018
    except (OSError, AttributeError):
        pytest.skip("not glibc: keep() does nothing there")
    assert run("1") == "True"
    assert run("0") == "False"
    assert run("off") == "False"
