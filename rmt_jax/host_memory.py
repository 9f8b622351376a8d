"""Keeps XLA:CPU's per-call buffers in the process instead of returning them to the kernel.

XLA:CPU allocates each call's temporaries in one block (about 290 MB for a training step of
the tiny preset at batch 4 x 8 segments) through `posix_memalign`. glibc serves a block that
large with a fresh `mmap` and gives it back with `munmap` when the call ends, so every step
first-touches all its pages again: about 70,000 page faults a step, a fifth of the step on a
2-core CPU. Called before JAX starts its CPU client (the launchers call it first), `keep()`
tells glibc to serve large blocks from the heap (`M_MMAP_MAX=0`), from one arena (threads
beyond the main one would still `mmap` blocks larger than their 64 MB heaps), and to keep up
to 1 GiB of freed memory at the top of the heap (`M_TRIM_THRESHOLD`): the next step reuses
the same pages. The cost is resident memory held between calls; `RMT_KEEP_HOST_MEMORY=0`
turns it off. Elsewhere than glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from absl import logging

ENV = "RMT_KEEP_HOST_MEMORY"
# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
TRIM_THRESHOLD = 1 << 30

_applied: bool | None = None


def keep() -> bool:
    """Applies the glibc settings once per process; True when they are in force."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018  (an AttributeError where it is not glibc)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in (
        (M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
    if ok:
        logging.info("host memory: glibc keeps freed blocks for reuse (%s=0 turns it off)", ENV)
    _applied = ok
    return ok
