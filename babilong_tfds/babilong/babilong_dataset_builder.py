"""The `babilong` TFDS builder: bAbI questions hidden in book text, by task and length.

Configs are named `{task}_{length}` (qa1_0k .. qa20_10M). Build without TensorFlow:

    builder = Builder(config="qa1_4k", data_dir=DIR)
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir="../shared/data"))
    ds = tfds.data_source("babilong/qa1_4k", split="test", data_dir=DIR)

or, with the `[tf]` extra, `tfds build babilong_tfds/babilong --config=qa1_4k --manual_dir=...`.

With a manual dir, bAbI files are looked for under `MANUAL/babi/` (recursively, plain or in
the official tar.gz) and books under `MANUAL/haystack/`. Without one, the official bAbI
archive and PG19's test split are downloaded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from babilong_tfds.compose import Composer
from babilong_tfds.dataset import BABI_SOURCES, StoryPool, generate_split
from babilong_tfds.haystack import Haystack, load_books_from_dir, load_pg19
from babilong_tfds.tasks import LENGTHS, TASKS, check_length, check_task
from babilong_tfds.tokenizer import get_tokenizer

BABI_URL = "http://www.thespermwhale.com/jaseweston/babi/tasks_1-20_v1-2.tar.gz"
DEFAULT_TRAIN_SAMPLES = 1000
DEFAULT_TEST_SAMPLES = 100


@dataclasses.dataclass(kw_only=True)
class BabilongConfig(tfds.core.BuilderConfig):
    """One task at one length, and how its samples are made."""

    task: str = "qa1"
    length: str = "0k"
    num_test: int = DEFAULT_TEST_SAMPLES  # samples in the test split (0: no test split)
    num_train: int = DEFAULT_TRAIN_SAMPLES  # samples in the train split (0: no train split)
    seed: int = 0  # every record depends on (seed, task, length, split, index) alone
    babi_source: str = "files"  # 'files' (the original bAbI) or 'generated' (the simulator)
    tokenizer: str = "sentencepiece"  # what lengths are counted in; 'gpt2:DIR' for GPT-2 BPE
    allow_reuse: bool = False  # let a sample use a book twice when the haystack is too small
    window: tuple[float, float] = (0.0, 1.0)  # facts confined to this part of the context
    depths: tuple[float, ...] = ()  # needle sweep: every sample at each of these depths

    def __post_init__(self):
        check_task(self.task)
        check_length(self.length)
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


def make_configs() -> list[BabilongConfig]:
    return [
        BabilongConfig(
            name=f"{task}_{length}",
            description=f"bAbI {task} hidden in {length} tokens of PG19 book text.",
            task=task,
            length=length,
        )
        for task in TASKS
        for length in LENGTHS
    ]


class Builder(tfds.core.GeneratorBasedBuilder):
    """BABILong: reasoning over facts spread through long book text."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "qa1..qa20 at 0k..10M tokens; fact offsets, supporting facts, book ids, seed.",
    }
    BUILDER_CONFIGS = make_configs()
    DEFAULT_CONFIG_NAME = "qa1_0k"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Optional. Put the bAbI task files (or the official tasks_1-20_v1-2.tar.gz) under
    `<manual_dir>/babi/` and Project Gutenberg books (.txt or .txt.gz) under
    `<manual_dir>/haystack/`; `../shared/data` is laid out this way. Without a manual dir the
    bAbI archive and PG19's test split are downloaded.
    """

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
            homepage="https://github.com/booydar/babilong",
        )

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
        return Haystack.build(books, tokenizer)

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        manual = self._manual_dir(dl_manager)
        tokenizer = get_tokenizer(cfg.tokenizer)
        babi_root = self._babi_root(dl_manager, manual)
        haystack = self._haystack(dl_manager, manual, tokenizer)
        composer = Composer(haystack, tokenizer, allow_reuse=cfg.allow_reuse)
        counts = {"test": cfg.num_test, "train": cfg.num_train}
        splits = {}
        for split, count in counts.items():
            if count <= 0:
                continue
            pool = StoryPool(
                cfg.task, split, babi_source=cfg.babi_source, babi_root=babi_root, seed=cfg.seed
            )
            if pool.samples is not None:
                pool.eligible(composer, cfg.length)  # fails before anything is written
            splits[split] = self._generate_examples(
                generate_split(
                    composer,
                    cfg.task,
                    cfg.length,
                    split,
                    count,
                    seed=cfg.seed,
                    babi_source=cfg.babi_source,
                    window=cfg.window,
                    depths=cfg.depths or None,
                    pool=pool,
                )
            )
        return splits

    def _generate_examples(self, records):
        yield from records
