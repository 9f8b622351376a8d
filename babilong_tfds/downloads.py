"""The data of a sample, downloaded where no local copy exists (Colab, a fresh machine).

    from babilong_tfds import downloads
    babi_dir = downloads.fetch_babi("~/babilong_data/babi")          # the bAbI archive
    books_dir = downloads.fetch_books("~/babilong_data/haystack", count=5)  # PG19 books

`fetch_babi` puts the official `tasks_1-20_v1-2.tar.gz` in a folder (`babilong_tfds.babi`
reads the tasks straight from the archive); `fetch_books` puts the first `count` books of a
PG19 split (as `load_pg19` lists them) in a folder as `<id>.txt`, which
`babilong_tfds.haystack` reads like the offline books. What is already there is kept (no
second download); every file is written whole or not at all. The URLs are arguments, so the
same code serves mirrors and tests (`file://` URLs).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from babilong_tfds.files import atomic_write
from babilong_tfds.haystack import PG19_BUCKET, PG19_LISTING

BABI_URL = "http://www.thespermwhale.com/jaseweston/babi/tasks_1-20_v1-2.tar.gz"
BABI_ARCHIVE = "tasks_1-20_v1-2.tar.gz"


def _get(url: str, timeout_s: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.read()
    except (urllib.error.URLError, OSError) as e:
        raise OSError(f"could not download {url} ({e}): check the connection, or put the "
                      "files in the folder by hand") from None


def fetch_babi(dest: str | os.PathLike, *, url: str = BABI_URL,
               timeout_s: float = 120.0) -> Path:
    """The folder `dest` holding the bAbI archive (downloaded unless it is there)."""
    dest = Path(dest).expanduser()
    archive = dest / BABI_ARCHIVE
    if not archive.is_file():
        data = _get(url, timeout_s)
        if data[:2] != b"\x1f\x8b":
            raise OSError(f"{url} did not return a gzip archive ({len(data)} bytes): use "
                          "another mirror (url=...)")
        dest.mkdir(parents=True, exist_ok=True)
        atomic_write(archive, lambda tmp: Path(tmp).write_bytes(data))
    return dest


def fetch_books(dest: str | os.PathLike, *, count: int = 5, split: str = "test",
                listing_url: str = PG19_LISTING, bucket: str = PG19_BUCKET,
                timeout_s: float = 120.0) -> Path:
    """The folder `dest` holding `count` PG19 books of `split` (the first by name)."""
    if count < 1:
        raise ValueError(f"count={count}: fetch at least one book")
    dest = Path(dest).expanduser()
    if len(list(dest.glob("*.txt"))) >= count:
        return dest
    listing = json.loads(_get(listing_url.format(split=split), timeout_s))
    names = sorted(item["name"] for item in listing.get("items", [])
                   if item["name"].endswith(".txt"))[:count]
    if not names:
        raise OSError(f"the PG19 listing for {split!r} names no book: check listing_url")
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = dest / Path(name).name
        if not path.is_file():
            book = _get(f"{bucket}/{name}", timeout_s)
            atomic_write(path, lambda tmp, book=book: Path(tmp).write_bytes(book))
    return dest
