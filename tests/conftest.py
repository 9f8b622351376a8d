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
