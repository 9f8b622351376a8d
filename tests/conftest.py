"""Shared test fixtures: where the offline data lives, and a skip when it is absent; one
persistent JAX compilation cache for the session."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"offline data {path} is absent (expected ../shared/data beside the repo)")
    return path


@pytest.fixture(scope="session", autouse=True)
def jax_compilation_cache(tmp_path_factory):
    """One persistent JAX compilation cache for the whole session, in this process and (through
    the environment) in every process a test starts: the run layer's tests train the same
    tiny programs again and again, in-process and in `python -m launch.train`, and each
    program then compiles once."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    cache_dir = tmp_path_factory.mktemp("jax_cache")
    settings = {"jax_compilation_cache_dir": str(cache_dir),
                "jax_persistent_cache_min_compile_time_secs": 0,
                "jax_persistent_cache_min_entry_size_bytes": 0}
    before = {name: getattr(jax.config, name) for name in settings}
    with pytest.MonkeyPatch.context() as env:
        for name, value in settings.items():
            env.setenv(name.upper(), str(value))
            jax.config.update(name, value)
        compilation_cache.reset_cache()  # a compile during collection found no cache yet
        yield cache_dir
    for name, value in before.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def fast_compiles():
    """XLA with most of its optimisations off (jax_disable_most_optimizations) for a module's
    tests, in this process and (through the environment) in the processes they start: the
    run layer's tests check numbers and behaviour, not speed, and compiling is most of a tiny
    run's time (about 40% less of it without them)."""
    import jax

    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
        yield
    jax.config.update("jax_disable_most_optimizations", before)


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
