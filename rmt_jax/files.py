"""Files of a run, local or remote: the workdir, checked before any work.

Run paths are `etils.epath.Path`s. A URI (`gs://bucket/run`, and the other schemes epath
serves: s3, az, hf) stays remote, read and written through tf.io.gfile or fsspec; a local
path is made absolute. `pathlib.Path(...).absolute()` would turn `gs://b/x` into a local
`./gs:/b/x`, so nothing in the run layer uses pathlib on a workdir.

Imports the standard library and `babilong_tfds.files` only (etils when a path is made): the
benchmark scripts use `atomic_write` on machines without the data stack.
"""

from __future__ import annotations

import os
import uuid

from babilong_tfds.files import (  # noqa: F401  (the run layer's file helpers, in one place)
    REMOTE_SCHEMES,
    atomic_write,
    check_backend,
    is_remote,
    run_path,
    scheme,
    write_text,
)


def prepare_workdir(path: str | os.PathLike, *, create: bool = True, writable: bool = True):
    """The workdir as an `epath.Path`, checked before any work: its scheme has a backend, it
    is not a file, it is made when absent and `create`, and this process can write in it
    when it exists and `writable`.

    Raises a ValueError that says what is wrong and what to do."""
    workdir = run_path(path)
    check_backend(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"workdir {workdir} is a file, not a folder: pick another --workdir")
    try:
        if create:
            workdir.mkdir(parents=True, exist_ok=True)
        if writable and workdir.exists():
            probe = workdir / f".write_probe.{uuid.uuid4().hex}"
            probe.write_text("")
            probe.unlink()
    except OSError as error:
        raise ValueError(f"cannot write in workdir {workdir} ({type(error).__name__}: "
                         f"{error}): pick a folder you can write, or fix its permissions"
                         ) from None
    return workdir
