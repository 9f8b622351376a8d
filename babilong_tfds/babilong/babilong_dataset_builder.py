"""The `babilong` TFDS builder: bAbI questions hidden in book text, by task and length.

Configs are named `{task}_{length}` (qa1_0k .. qa20_10M); their defaults make what the
official generator makes (see RELEASE_NOTES of 2.0.0 and `babilong_tfds.compose.Recipe`).
Build without TensorFlow:

    builder = Builder(config="qa1_4k", data_dir=DIR)
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir="../shared/data"))
    ds = tfds.data_source("babilong/qa1_4k", split="test", data_dir=DIR)

or, with the `[tf]` extra, `tfds build babilong_tfds/babilong --config=qa1_4k --manual_dir=...`.
Either writes array_record (what `tfds.data_source` and `launch.evaluate --source=tfds` read)
unless given another file format. Records are written shard by shard as they are made
(`tfds.core.ShardBasedBuilder`, shards of at most `SHARD_TOKENS` context tokens): no shuffle
buffer, so a 10M split needs neither TensorFlow nor its size in memory.

Apache Beam (the `[beam]` extra) makes the records of big splits across workers when the
download config names a Beam runner or options, byte for byte as one process does:

    tfds build babilong --imports=babilong_tfds.babilong --config=qa1_1M --manual_dir=... \
        --beam_pipeline_options="direct_num_workers=8,direct_running_mode=multi_processing"

(name the module, not the folder: Beam's workers import the builder by module name), or
`download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=...,
beam_runner="DirectRunner", beam_options=PipelineOptions([...])))`. TensorFlow is not needed.

With a manual dir, bAbI files are looked for under `MANUAL/babi/` (recursively, plain or in
the official tar.gz), books under `MANUAL/haystack/` and the GPT-2 BPE files (vocab.json,
merges.txt) in `MANUAL/gpt2_tokenizer/`. Without one, the official bAbI archive, PG19's test
split and the GPT-2 files (Hugging Face hub) are downloaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import importlib.util
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from tensorflow_datasets.core import writer as writer_lib
from tensorflow_datasets.proto import tf_example_pb2

from babilong_tfds import haystack as haystack_lib
from babilong_tfds.compose import Composer, Recipe
from babilong_tfds.dataset import BABI_SOURCES, StoryPool, generate_split
from babilong_tfds.downloads import BABI_URL
from babilong_tfds.haystack import Haystack, load_books_from_dir, load_pg19
from babilong_tfds.tasks import LENGTHS, TASKS, check_length, check_task
from babilong_tfds.tokenizer import (
    DEFAULT_TOKENIZER,
    GPT2_URLS,
    Gpt2BpeTokenizer,
    find_gpt2_dir,
    get_tokenizer,
    tokenizer_kind,
)

DEFAULT_TEST_SAMPLES = 100


@dataclasses.dataclass(kw_only=True)
class BabilongConfig(tfds.core.BuilderConfig):
    """One task at one length, and how its samples are made."""

    task: str = "qa1"
    length: str = "0k"
    num_test: int = DEFAULT_TEST_SAMPLES  # samples in the test split (0: no test split)
    num_train: int = 0  # samples in the train split (0: no train split, as published)
    seed: int = 0  # every record depends on (seed, task, length, split, index) alone
    babi_source: str = "files"  # 'files' (the original bAbI) or 'generated' (the simulator)
    tokenizer: str = DEFAULT_TOKENIZER  # what lengths are counted in: 'gpt2' ('gpt2:DIR'),
    # or the legacy 'sentencepiece'
    splitter: str = haystack_lib.DEFAULT_SPLITTER  # 'punkt' (official) | legacy 'blingfire'
    length_table: str = "official"  # 'official' (1k = 1,000 tokens) | legacy 'pow2' (1,024)
    story_filter: str = "lines"  # 'lines' (official) | legacy 'tokens' (fact tokens <= L/8)
    fill: str = "exact"  # 'exact' (official: budget met, last sentence cut) | 'whole_sentences'
    allow_reuse: bool = False  # let a sample use a book twice when the haystack is too small
    window: tuple[float, float] = (0.0, 1.0)  # facts confined to this part of the context
    depths: tuple[float, ...] = ()  # needle sweep: every sample at each of these depths

    def __post_init__(self):
        check_task(self.task)
        check_length(self.length)
        haystack_lib.check_splitter(self.splitter)
        self.recipe()  # validates the table, filter and fill
        if self.babi_source not in BABI_SOURCES:
            raise ValueError(
                f"unknown babi_source {self.babi_source!r}: expected one of "
                f"{', '.join(BABI_SOURCES)}"
            )
        if self.num_test < 0 or self.num_train < 0 or self.num_test + self.num_train == 0:
            raise ValueError(
                f"num_test={self.num_test}, num_train={self.num_train}: counts must be "
                "non-negative and at least one positive"
            )

    def recipe(self) -> Recipe:
        return Recipe(lengths=self.length_table, story_filter=self.story_filter, fill=self.fill)

    def search_dirs(self, manual: Path | None) -> list[Path]:
        """Where a bare 'gpt2' tokenizer looks for its files (then the Hugging Face hub)."""
        return [] if manual is None else [manual]


def config_description(task: str, length: str, name: str) -> str:
    return f"bAbI {task} hidden in {length} tokens of book text ({name})."


def make_configs() -> list[BabilongConfig]:
    return [
        BabilongConfig(
            name=f"{task}_{length}",
            description=config_description(task, length, f"{task}_{length}"),
            task=task,
            length=length,
        )
        for task in TASKS
        for length in LENGTHS
    ]


class Builder(tfds.core.ShardBasedBuilder):
    """BABILong: reasoning over facts spread through long book text."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "2.0.0": (
            "The official generator's defaults (booydar/babilong create_tasks.py, "
            "babilong_utils.py): lengths in GPT-2 BPE tokens (was: the project's "
            "sentencepiece); '1k' = 1,000 tokens (was 1,024; '1M' = 1,000,000, was 2**20) and "
            "the context holds exactly length - 300 tokens, facts included, the last "
            "background sentence cut to the budget (was: whole sentences within max(20, 1%) "
            "below it); the story filter counts fact lines plus the question line, at most "
            "(length - 300) // 8 (was: fact tokens at most length / 8), so long qa3 stories "
            "stay; record i asks the same question at every length (was: a new order per "
            "length); background split with NLTK's untrained Punkt, sentences under 10 "
            "tokens skipped, the books' line breaks kept, a random book and character offset "
            "per draw with the first and last partial sentences dropped, books drawn with "
            "replacement (was: Blingfire on unwrapped paragraphs, sentences under 3 words "
            "dropped, a random sentence, a book once per sample). The test split reads the "
            "bAbI en-10k test files, as the published sets do, and `question` keeps the "
            "file's text before the tab ('Where is John? ', was stripped). Every earlier "
            "behaviour stays "
            "as a named option (tokenizer='sentencepiece', splitter='blingfire', "
            "length_table='pow2', story_filter='tokens', fill='whole_sentences'), which "
            "config names carry as suffixes. A registered config holds the test split alone "
            "(100 samples, as published; was: also 1,000 train samples). Metadata records "
            "the tokenizer, splitter and generator versions."
        ),
        "1.0.0": "qa1..qa20 at 0k..10M tokens; fact offsets, supporting facts, book ids, seed.",
    }
    # What the records of this version follow: the official generator, at the commit read.
    GENERATOR = "booydar/babilong@7a6efee (data/create_tasks.py, babilong/babilong_utils.py)"
    BUILDER_CONFIGS = make_configs()
    DEFAULT_CONFIG_NAME = "qa1_0k"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Optional. Put the bAbI task files (or the official tasks_1-20_v1-2.tar.gz) under
    `<manual_dir>/babi/` and Project Gutenberg books (.txt or .txt.gz) under
    `<manual_dir>/haystack/`, and GPT-2's vocab.json and merges.txt under
    `<manual_dir>/gpt2_tokenizer/`; `../shared/data` is laid out this way. Without a manual dir
    the bAbI archive, PG19's test split and the GPT-2 files are downloaded.
    """

    def __init__(self, *, file_format=None, **kwargs):
        super().__init__(file_format=file_format, **kwargs)
        # TFDS writes tfrecord unless told otherwise (`tfds build` too); the evaluation and
        # grain read through `tfds.data_source`, which needs array_record: a new build
        # writes that. A prepared dataset keeps the format it was written in.
        if file_format is None and not self.is_prepared():
            self.info.set_file_format("array_record", override=True)

    def download_and_prepare(self, **kwargs):
        """TFDS's, by one process at a time per config and data dir (a lock file in the
        config's folder, held while building); a build first removes the `incomplete.*`
        folders that killed builds of this config left. Every build of the config through
        this builder holds the lock, so such a folder found while holding it belongs to a
        process that is gone. A remote data dir (gs://) is built without either."""
        config_dir = os.fspath(self.data_dir).rstrip("/").rsplit("/", 1)[0]
        if "://" in config_dir or self.is_prepared():  # remote, or nothing to write
            return super().download_and_prepare(**kwargs)
        with build_lock(Path(config_dir)):
            remove_incomplete_dirs(Path(config_dir), str(self.version))
            return super().download_and_prepare(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "input": tfds.features.Text(),
                    "question": tfds.features.Text(),
                    "target": tfds.features.Text(),
                    "task": tfds.features.Text(),
                    "length": tfds.features.Text(),
                    "num_tokens": np.int64,
                    "fact_offsets": tfds.features.Sequence(np.int64),
                    "facts": tfds.features.Sequence(tfds.features.Text()),
                    "supporting": tfds.features.Sequence(np.int64),
                    "book_ids": tfds.features.Sequence(tfds.features.Text()),
                    "seed": np.int64,
                    "index": np.int64,
                    "depth": np.float32,
                    "origin": tfds.features.Text(),
                }
            ),
            supervised_keys=None,
            disable_shuffling=True,  # records stay in index order, as the JSONL export
            metadata=tfds.core.MetadataDict(self._recipe_metadata()),
            homepage="https://github.com/booydar/babilong",
        )

    def _recipe_metadata(self) -> dict:
        """How the records are made; the tokenizer's files are added once it is loaded."""
        cfg = self.builder_config
        return {
            "generator": f"babilong_tfds {self.VERSION} following {self.GENERATOR}",
            "tokenizer": tokenizer_kind(cfg.tokenizer),
            "splitter": haystack_lib.SPLITTER_VERSIONS[cfg.splitter],
            "splitter_library": _library_version(cfg.splitter),
            "min_sentence": (f"{haystack_lib.MIN_SENTENCE_TOKENS} tokens"
                             if cfg.splitter == "punkt" else f"{haystack_lib.MIN_WORDS} words"),
            "length_table": cfg.length_table,
            "length_tokens": check_length(cfg.length, cfg.length_table),
            "story_filter": cfg.story_filter,
            "fill": cfg.fill,
            "seed": cfg.seed,
        }

    def _tokenizer(self, dl_manager, manual: Path | None):
        """The config's tokenizer; a bare 'gpt2' without local files is downloaded."""
        spec, search = self.builder_config.tokenizer, self.builder_config.search_dirs(manual)
        if spec == "gpt2" and find_gpt2_dir(search) is None:
            paths = dl_manager.download(GPT2_URLS)
            return Gpt2BpeTokenizer(paths["vocab.json"], paths["merges.txt"])
        return get_tokenizer(spec, search_dirs=search)

    def _manual_dir(self, dl_manager) -> Path | None:
        try:
            return Path(dl_manager.manual_dir)
        except (AssertionError, ValueError):
            return None

    def _babi_root(self, dl_manager, manual: Path | None) -> Path | None:
        if self.builder_config.babi_source == "generated":
            return None
        if manual is not None and (manual / "babi").exists():
            return manual / "babi"
        logging.info("no bAbI files under the manual dir; downloading %s", BABI_URL)
        return Path(dl_manager.download_and_extract(BABI_URL))

    def _haystack(self, dl_manager, manual: Path | None, tokenizer) -> Haystack | None:
        if check_length(self.builder_config.length) == 0:
            return None
        if manual is not None and (manual / "haystack").exists():
            books = load_books_from_dir(manual / "haystack")
        else:
            books = load_pg19("test", dl_manager=dl_manager)
        return Haystack.build(books, tokenizer, splitter=self.builder_config.splitter)

    def _example_writer(self):
        return SortedFeaturesWriter(file_format=self.info.file_format)

    def _download_and_prepare(self, dl_manager, download_config=None):
        # A Beam runner or Beam options in the download config (`tfds build
        # --beam_pipeline_options=...`) ask for the Beam build; without them, or without
        # apache_beam, the records are made in this process.
        self._use_beam = download_config is not None and (
            download_config.beam_runner is not None or download_config.beam_options is not None
        )
        if self._use_beam and not type(self).__module__.startswith("babilong_tfds."):
            # `tfds build babilong_tfds/babilong` loads this file as a top-level module
            # `babilong`, which Beam's worker processes cannot import.
            raise ValueError(
                "the Beam build's workers import the builder by its module name: run "
                "`tfds build babilong --imports=babilong_tfds.babilong ...` (not the folder "
                "path), or call download_and_prepare from Python"
            )
        if self._use_beam and importlib.util.find_spec("apache_beam") is None:
            raise ValueError(
                "a Beam runner or Beam options were given but apache_beam is not installed: "
                "pip install -e '.[beam]', or build without them (in this process)"
            )
        if self._use_beam and download_config.beam_runner is None:
            # The shard writer runs Beam only for a named runner; options alone mean the
            # direct runner, as they do for `tfds build`.
            download_config = dataclasses.replace(download_config, beam_runner="DirectRunner")
        return super()._download_and_prepare(dl_manager, download_config)

    def _shard_iterators_per_split(self, dl_manager):
        """Per split, the makers of its shards in order: each shard holds samples
        `shard_ranges(...)` and is written as its records are made (no shuffle buffer)."""
        cfg = self.builder_config
        manual = self._manual_dir(dl_manager)
        tokenizer = self._tokenizer(dl_manager, manual)
        self.info.metadata.update(tokenizer_name=tokenizer.name,
                                  tokenizer_fingerprint=tokenizer.fingerprint)
        babi_root = self._babi_root(dl_manager, manual)
        haystack = self._haystack(dl_manager, manual, tokenizer)
        composer = Composer(haystack, tokenizer, allow_reuse=cfg.allow_reuse, recipe=cfg.recipe())
        counts = {"test": cfg.num_test, "train": cfg.num_train}
        tokens = check_length(cfg.length, cfg.length_table)
        splits = {}
        for split, count in counts.items():
            if count <= 0:
                continue
            pool = StoryPool(
                cfg.task, split, babi_source=cfg.babi_source, babi_root=babi_root, seed=cfg.seed
            )
            if pool.samples is not None:
                pool.eligible(composer, cfg.length)  # fails before anything is written
            ranges = shard_ranges(count, tokens, max(1, len(cfg.depths)))
            if getattr(self, "_use_beam", False):
                haystack_dir = None
                if haystack is not None and manual is not None and (manual / "haystack").exists():
                    haystack_dir = manual / "haystack"
                recipe = SplitRecipe(
                    config=cfg,
                    split=split,
                    count=count,
                    babi_root=None if babi_root is None else str(babi_root),
                    tokenizer=tokenizer,
                    haystack_dir=None if haystack_dir is None else str(haystack_dir),
                    # Downloaded books travel with the recipe; a manual dir is read again.
                    haystack=haystack if haystack_dir is None else None,
                )
                splits[split] = [functools.partial(records_in_range, bounds, recipe=recipe)
                                 for bounds in ranges]
                continue
            splits[split] = [
                functools.partial(config_records, cfg, composer, pool, split, count, bounds)
                for bounds in ranges
            ]
        return splits


# TFDS's generator-based writer holds a whole split in memory and spills it, past 1000 MiB,
# through tf.io.gfile (TensorFlow); its shard writer, used here, writes each shard as its
# records are made but keeps that shard's records until it is done. Shards of at most
# SHARD_TOKENS context tokens (~300 MB of text) bound the memory of a build at any length:
# a 100-sample 10M split is 17 shards of 6 samples. Shards depend on the config alone, so
# every build (Beam's workers make one shard each) writes the same files.
SHARD_TOKENS = 1 << 26
# A 0k sample is the facts alone: count it as this many tokens.
MIN_SAMPLE_TOKENS = 1000


def shard_ranges(count: int, length_tokens: int, records_per_sample: int = 1
                 ) -> list[tuple[int, int]]:
    """The (start, stop) sample ranges of the shards of a split of `count` samples."""
    per_sample = max(length_tokens, MIN_SAMPLE_TOKENS) * records_per_sample
    size = max(1, SHARD_TOKENS // per_sample)
    return [(start, min(start + size, count)) for start in range(0, count, size)]


LOCK_NAME = ".build.lock"


@contextlib.contextmanager
def build_lock(config_dir: Path):
    """Holds an exclusive lock on `config_dir/.build.lock` (which holds the holder's pid);
    a ValueError when another process holds it. The file is removed on release."""
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ValueError(
                f"another process (pid {holder}) is building into {config_dir}: wait for it "
                "to finish, or build into another data_dir"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the file was released and removed meanwhile: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.unlink(path)  # before unlocking: a waiting opener sees a new inode and retries
        os.close(fd)


def remove_incomplete_dirs(config_dir: Path, version: str) -> list[Path]:
    """Removes TFDS's temporary folders of `version` (`incomplete.XXXXXX_{version}`, six
    upper-case letters or digits) in `config_dir`; call it holding `build_lock`."""
    pattern = re.compile(rf"incomplete\.[A-Z0-9]{{6}}_{re.escape(version)}")
    removed = []
    for path in sorted(config_dir.iterdir()):
        if path.is_dir() and not path.is_symlink() and pattern.fullmatch(path.name):
            logging.warning("removing %s, left by an interrupted build of this config", path)
            shutil.rmtree(path)
            removed.append(path)
    return removed


class SortedFeaturesWriter(writer_lib.ExampleWriter):
    """Writes each record with its features in name order.

    TFDS serializes a record's feature map in the order of protobuf's hash table, which is
    seeded per process: the same records written by two processes (two builds, or Beam
    workers) differ in bytes. Sorted, they are equal byte for byte."""

    def write(self, path, examples):
        return super().write(path, ((key, sorted_example(data)) for key, data in examples))


def sorted_example(serialized: bytes) -> bytes:
    """A serialized tf.train.Example with its feature map written in key order."""
    return tf_example_pb2.Example.FromString(serialized).SerializeToString(deterministic=True)


@dataclasses.dataclass(frozen=True)
class SplitRecipe:
    """What a Beam worker needs to make records of one split (picklable, no TFDS objects)."""

    config: BabilongConfig
    split: str
    count: int
    babi_root: str | None
    tokenizer: object  # the one made here (it pickles as the paths of its files)
    haystack_dir: str | None  # books read (and their haystack cached) again by each worker
    haystack: Haystack | None  # or the haystack itself (downloaded books; None at 0k)


# Per worker process: the composer and story pool of each recipe, made once.
_WORKER_STATE: dict = {}


def records_in_range(bounds: tuple[int, int], recipe: SplitRecipe):
    """The (key, record) pairs of samples bounds[0]..bounds[1]-1 of a split: the same ones
    the single-process build makes (every record depends on its index alone)."""
    cfg = recipe.config
    key = (cfg.name, cfg.seed, recipe.split, recipe.babi_root, recipe.haystack_dir)
    if key not in _WORKER_STATE or recipe.haystack is not None:
        tokenizer = recipe.tokenizer
        haystack = recipe.haystack
        if recipe.haystack_dir is not None:
            haystack = Haystack.build(load_books_from_dir(recipe.haystack_dir), tokenizer,
                                      splitter=cfg.splitter)
        composer = Composer(haystack, tokenizer, allow_reuse=cfg.allow_reuse,
                            recipe=cfg.recipe())
        pool = StoryPool(
            cfg.task,
            recipe.split,
            babi_source=cfg.babi_source,
            babi_root=recipe.babi_root,
            seed=cfg.seed,
        )
        _WORKER_STATE[key] = (composer, pool)
    composer, pool = _WORKER_STATE[key]
    # recipe.count is the split's size: which question record i asks depends on it.
    yield from config_records(cfg, composer, pool, recipe.split, recipe.count, bounds)


def config_records(cfg: BabilongConfig, composer: Composer, pool: StoryPool, split: str,
                   count: int, bounds: tuple[int, int]) -> Iterator[tuple[int, dict]]:
    """Records bounds[0]..bounds[1]-1 of a split of `count` made with `cfg`'s options: one
    shard, the same in a single process and in a Beam worker."""
    start, stop = bounds
    return generate_split(composer, cfg.task, cfg.length, split, count, seed=cfg.seed,
                          babi_source=cfg.babi_source, window=cfg.window,
                          depths=cfg.depths or None, pool=pool, start=start, stop=stop)


def _library_version(splitter: str) -> str:
    """'nltk 3.10.4' / 'blingfire 0.1.8': the splitting library as installed."""
    from importlib import metadata

    name = "nltk" if splitter == "punkt" else "blingfire"
    try:
        return f"{name} {metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return f"{name} (not installed)"
