"""Paths that may be remote, and writes that land whole or not at all.

Paths given as URIs (`gs://bucket/x`, and the other schemes etils.epath serves: s3, az, hf)
stay remote, read and written through tf.io.gfile or fsspec; a local path is made absolute.
`pathlib.Path(...).absolute()` would turn `gs://b/x` into a local `./gs:/b/x`, so nothing
that writes a user's path uses pathlib on it.

The one atomic write of the project (datasets, caches, results, checkpoints' configs).
Imports the standard library only (etils when a path is made): the benchmark scripts use
`atomic_write` on machines without the data stack.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

# The URI schemes etils.epath serves, and what each needs installed besides epath.
REMOTE_SCHEMES = {
    "gs": "gcsfs (pip install gcsfs) or TensorFlow (pip install tensorflow-cpu)",
    "s3": "s3fs (pip install s3fs) or TensorFlow",
    "az": "adlfs (pip install adlfs)",
    "hf": "huggingface_hub (pip install huggingface_hub)",
}


def scheme(path: str | os.PathLike) -> str | None:
    """'gs' for 'gs://b/x', None for a local path."""
    text = os.fspath(path)
    return text.split("://", 1)[0] if "://" in text else None


def is_remote(path: str | os.PathLike) -> bool:
    return scheme(path) is not None


def run_path(path: str | os.PathLike):
    """An `epath.Path`: a supported URI as it is, a local path made absolute.

    Raises a ValueError for a URI scheme that epath does not serve (it would become a
    local folder named after the scheme)."""
    from etils import epath

    text = os.fspath(path)
    name = scheme(text)
    if name is None:
        return epath.Path(os.path.abspath(text))
    if name not in REMOTE_SCHEMES:
        raise ValueError(f"{text}: {name}:// paths are not supported: use a local path or one "
                         f"of {', '.join(s + '://' for s in REMOTE_SCHEMES)}")
    return epath.Path(text)


def check_backend(path) -> None:
    """Raises a ValueError naming the package to install when `path`'s scheme has no
    filesystem backend here (gs:// without gcsfs nor TensorFlow, ...)."""
    name = scheme(path)
    if name is None:
        return
    try:
        path.exists()
    except ImportError as error:
        raise ValueError(f"{path}: reading and writing {name}:// paths needs "
                         f"{REMOTE_SCHEMES[name]} ({error})") from None


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Calls write(tmp_name) on a local temporary file, then puts it at `path` in one rename:
    readers find the old file or the new one, never a part; nothing is left on error.

    `path` may be remote (gs://...): the local file is then copied beside it and renamed.
    A local file gets the permissions of a newly created one (0666 less the umask, so 0644
    under the usual umask 022), not the 0600 of `tempfile.mkstemp`.
    """
    if is_remote(path):
        _atomic_write_remote(run_path(path), write)
        return
    path = Path(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        # O_EXCL: our own new file; mode 0o666 is reduced by the umask as for open().
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _atomic_write_remote(path, write: Callable[[str], object]) -> None:
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    with tempfile.TemporaryDirectory() as local_dir:
        local = os.path.join(local_dir, path.name)
        write(local)
        try:
            tmp.write_bytes(Path(local).read_bytes())
            tmp.replace(path)
        finally:
            if tmp.exists():
                tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """`atomic_write` of a UTF-8 text."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_folder_writable(folder: Path, what: str) -> None:
    """`folder` (to be made if absent) can hold new files: checked before any work, so that a
    bad output path wastes none. Raises a ValueError that starts with `what` (the flag)."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what}: {folder} is a file, not a folder: pick another path")
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise ValueError(f"{what}: {base} is a file, not a folder: pick another path")
    probe = base / f".write_probe.{uuid.uuid4().hex}.tmp"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as error:
        raise ValueError(f"{what}: cannot write in {base} ({type(error).__name__}: "
                         f"{error.strerror}): pick a folder you can write, or fix its "
                         "permissions") from None
