"""Shared test fixtures: where the offline data lives, and a skip when it is absent."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"offline data {path} is absent (expected ../shared/data beside the repo)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: the bAbI files, haystack books and GPT-2 BPE files."""
    return _need(SHARED_DATA)


@pytest.fixture(scope="session")
def babi_root(shared_data) -> Path:
    return _need(shared_data / "babi")


@pytest.fixture(scope="session")
def haystack_dir(shared_data) -> Path:
    return _need(shared_data / "haystack")


@pytest.fixture(scope="session")
def gpt2_dir(shared_data) -> Path:
    return _need(shared_data / "gpt2_tokenizer")


# A few books are enough for most tests and keep tokenizing them quick.
SMALL_BOOKS = ("pg11.txt", "pg1342.txt", "pg84.txt")


@pytest.fixture(scope="session")
def small_haystack_dir(haystack_dir, tmp_path_factory) -> Path:
    """A folder linking three of the shared books."""
    out = tmp_path_factory.mktemp("small_haystack")
    for name in SMALL_BOOKS:
        (out / name).symlink_to(haystack_dir / name)
    return out


@pytest.fixture(scope="session")
def manual_dir(babi_root, small_haystack_dir, gpt2_dir, tmp_path_factory) -> Path:
    """A TFDS manual dir laid out like ../shared/data, with the small haystack."""
    out = tmp_path_factory.mktemp("manual")
    (out / "babi").symlink_to(babi_root)
    (out / "haystack").symlink_to(small_haystack_dir)
    (out / "gpt2_tokenizer").symlink_to(gpt2_dir)
    return out


@pytest.fixture(scope="session")
def sp_tokenizer():
    from babilong_tfds.tokenizer import get_tokenizer

    return get_tokenizer("sentencepiece")


@pytest.fixture(scope="session")
def small_haystack(small_haystack_dir, sp_tokenizer):
    from babilong_tfds.haystack import Haystack, load_books_from_dir

    return Haystack.build(load_books_from_dir(small_haystack_dir), sp_tokenizer)


@pytest.fixture(scope="session")
def gpt2_tokenizer(gpt2_dir):
    from babilong_tfds.tokenizer import get_tokenizer

    return get_tokenizer(f"gpt2:{gpt2_dir}")


@pytest.fixture(scope="session")
def gpt2_haystack(small_haystack_dir, gpt2_tokenizer):
    """The small haystack as the official generator splits and counts it (Punkt, GPT-2)."""
    from babilong_tfds.haystack import Haystack, load_books_from_dir

    return Haystack.build(load_books_from_dir(small_haystack_dir), gpt2_tokenizer)
