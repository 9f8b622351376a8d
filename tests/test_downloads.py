"""babilong_tfds.downloads against local file:// mirrors: what the notebook fetches in Colab."""

import json

import pytest

from babilong_tfds import downloads
from babilong_tfds.babi import load_babi
from babilong_tfds.haystack import load_books_from_dir


@pytest.fixture
def mirror(tmp_path, babi_root, haystack_dir):
    """A bAbI archive, a PG19-style listing and three books, served as file:// URLs."""
    site = tmp_path / "site"
    (site / "test").mkdir(parents=True)
    archive = babi_root / "tasks_1-20_v1-2-en-10k.tar.gz"
    (site / "babi.tar.gz").write_bytes(archive.read_bytes())
    books = sorted(haystack_dir.glob("*.txt"))[:3]
    for book in books:
        (site / "test" / book.name).write_bytes(book.read_bytes())
    items = [{"name": f"test/{b.name}"} for b in books] + [{"name": "test/"}]
    (site / "listing.json").write_text(json.dumps({"items": items}))
    return site, [b.name for b in books]


def test_fetch_babi_and_books_from_a_mirror(mirror, tmp_path):
    site, names = mirror
    babi = downloads.fetch_babi(tmp_path / "data" / "babi", url=(site / "babi.tar.gz").as_uri())
    samples = load_babi("qa1", "test", babi)
    assert len(samples) == 1000 and samples[0].answer
    books = downloads.fetch_books(tmp_path / "data" / "books", count=2,
                                  listing_url=(site / "listing.json").as_uri(),
                                  bucket=site.as_uri())
    assert sorted(p.name for p in books.glob("*.txt")) == sorted(names)[:2]
    assert len(load_books_from_dir(books)) == 2
    # already there: nothing is downloaded again (the mirror is gone)
    (site / "babi.tar.gz").unlink()
    (site / "listing.json").unlink()
    assert downloads.fetch_babi(babi, url=(site / "babi.tar.gz").as_uri()) == babi
    assert downloads.fetch_books(books, count=2, listing_url=(site / "listing.json").as_uri(),
                                 bucket=site.as_uri()) == books


def test_bad_downloads_leave_nothing(mirror, tmp_path):
    site, _ = mirror
    (site / "not_gzip").write_text("<html>moved</html>")
    with pytest.raises(OSError, match="did not return a gzip archive"):
        downloads.fetch_babi(tmp_path / "babi", url=(site / "not_gzip").as_uri())
    assert not (tmp_path / "babi").exists()
    with pytest.raises(OSError, match="could not download"):
        downloads.fetch_babi(tmp_path / "babi", url=(site / "absent.tar.gz").as_uri())
    # a book missing from the bucket: the error names it, the books before it are kept whole
    listing = json.loads((site / "listing.json").read_text())
    listing["items"].append({"name": "test/zzz_missing.txt"})
    (site / "listing.json").write_text(json.dumps(listing))
    with pytest.raises(OSError, match="zzz_missing.txt"):
        downloads.fetch_books(tmp_path / "books", count=10,
                              listing_url=(site / "listing.json").as_uri(), bucket=site.as_uri())
    assert all(p.stat().st_size > 0 for p in (tmp_path / "books").iterdir())
    assert not list((tmp_path / "books").glob(".*tmp"))
    with pytest.raises(ValueError, match="count=0"):
        downloads.fetch_books(tmp_path / "books", count=0)
