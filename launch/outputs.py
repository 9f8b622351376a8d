"""Where an entry point will write, checked before its compute.

A results file or folder that cannot be written was found only when the work was done
(`launch.evaluate --out_dir`, the benchmarks' `--out`). `check_output_file` and
`check_output_dir` raise a ValueError naming the flag, what is wrong and what to do; the
entry points print it as an `error:` line before anything is computed. Nothing is left
behind: the write test is a temporary file made and removed in the nearest existing folder
(folders still to make are made later by the writer). A remote path (gs://...) is checked
for a filesystem backend only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from babilong_tfds.files import check_backend, check_folder_writable, is_remote, run_path


def check_output_dir(path: str | os.PathLike, flag: str) -> None:
    """`path` is a folder this process can write results into (made later if absent)."""
    text = os.fspath(path)
    if is_remote(text):
        check_backend(run_path(text))
        return
    check_folder_writable(Path(text).absolute(), f"{flag}={text}")


def check_output_file(path: str | os.PathLike, flag: str = "--out", *,
                      json_list: bool = False) -> None:
    """`path` names a file this process can write (atomically: a new file beside it).

    json_list: records are appended to the file, so an existing one must hold a JSON list."""
    text = os.fspath(path)
    if is_remote(text):
        check_backend(run_path(text))
        return
    what = f"{flag}={text}"
    file = Path(text).absolute()
    if file.is_dir():
        raise ValueError(f"{what} is a folder: name a file, e.g. {file / 'results.json'}")
    check_folder_writable(file.parent, what)
    if json_list and file.exists():
        try:
            records = json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, OSError) as error:
            records = error
        if not isinstance(records, list):
            raise ValueError(f"{what} holds no JSON list ({records!r:.80}) and the records are "
                             "appended to one: name a new file, or fix or remove that one")
