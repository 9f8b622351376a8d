"""Building BABILong datasets from Python: TFDS array_record datasets and JSONL exports.

`build(...)` makes one TFDS dataset per (task, length) with `babilong.Builder`, then, when
asked, exports `{jsonl_dir}/{task}/{length}.jsonl` with one JSON object per line in the
published layout (`input`, `question`, `target`, then our extra fields). Config names are
`{task}_{length}` for the default options (the published test set: 100 test samples, the
official generator's recipe) and carry a suffix naming every option that differs
(`qa1_4k_test20_s3`, `qa1_4k_all1000`; the legacy options add `sp`,
`blingfire`, `pow2`, `tokfilter`, `whole`), so that datasets built with other options never
collide.

Nothing half-written is left behind: TFDS writes into a temporary folder that it renames at
the end (and removes on error), and each JSONL file is written to a temporary file that is
renamed once complete.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from babilong_tfds.babilong import BabilongConfig, Builder
from babilong_tfds.babilong.babilong_dataset_builder import (
    DEFAULT_TEST_SAMPLES,
    config_description,
)
from babilong_tfds.compose import Composer, Recipe
from babilong_tfds.dataset import StoryPool
from babilong_tfds.files import check_folder_writable
from babilong_tfds.haystack import DEFAULT_SPLITTER, Haystack, check_splitter, load_books_from_dir
from babilong_tfds.published import write_hf_dir
from babilong_tfds.tasks import check_length, parse_lengths, parse_tasks
from babilong_tfds.tokenizer import DEFAULT_TOKENIZER, find_gpt2_dir, get_tokenizer, tokenizer_kind

FIELDS_FIRST = ("input", "question", "target")


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """What every dataset of one build shares."""

    split: str = "test"  # 'test', 'train' or 'all'
    num_samples: int = DEFAULT_TEST_SAMPLES  # per split built
    seed: int = 0
    babi_source: str = "files"
    tokenizer: str = DEFAULT_TOKENIZER  # 'gpt2' / 'gpt2:DIR'; legacy 'sentencepiece[:MODEL]'
    allow_reuse: bool = False
    window: tuple[float, float] = (0.0, 1.0)
    depths: tuple[float, ...] = ()
    splitter: str = DEFAULT_SPLITTER  # 'punkt'; legacy 'blingfire'
    length_table: str = "official"  # legacy 'pow2'
    story_filter: str = "lines"  # legacy 'tokens'
    fill: str = "exact"  # legacy 'whole_sentences'

    def __post_init__(self):
        if self.split not in ("test", "train", "all"):
            raise ValueError(f"unknown split {self.split!r}: expected test, train or all")
        if self.num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {self.num_samples}")
        check_splitter(self.splitter)
        Recipe(lengths=self.length_table, story_filter=self.story_filter, fill=self.fill)
        if tokenizer_kind(self.tokenizer) not in ("gpt2", "sentencepiece"):
            raise ValueError(
                f"unknown tokenizer {self.tokenizer!r}: expected 'gpt2', 'gpt2:DIR', "
                "'sentencepiece' or 'sentencepiece:MODEL'"
            )

    @classmethod
    def legacy(cls, **overrides) -> BuildOptions:
        """Every legacy option: the project's samples before dataset version 2.0.0."""
        return cls(**({"tokenizer": "sentencepiece", "splitter": "blingfire",
                       "length_table": "pow2", "story_filter": "tokens",
                       "fill": "whole_sentences"} | overrides))

    def config(self, task: str, length: str) -> BabilongConfig:
        num_test = self.num_samples if self.split in ("test", "all") else 0
        num_train = self.num_samples if self.split in ("train", "all") else 0
        suffix = []
        if (self.split, self.num_samples) != ("test", DEFAULT_TEST_SAMPLES):
            suffix.append(f"{self.split}{self.num_samples}")
        if self.seed:
            suffix.append(f"s{self.seed}")
        if self.babi_source != "files":
            suffix.append("gen")
        if tokenizer_kind(self.tokenizer) != tokenizer_kind(DEFAULT_TOKENIZER):
            suffix.append("sp")
        elif self.tokenizer != DEFAULT_TOKENIZER:
            suffix.append("gpt2dir")  # GPT-2 files from a folder named in the config
        if self.splitter != DEFAULT_SPLITTER:
            suffix.append(self.splitter)
        if self.length_table != "official":
            suffix.append(self.length_table)
        if self.story_filter != "lines":
            suffix.append("tokfilter")
        if self.fill != "exact":
            suffix.append("whole")
        if self.allow_reuse:
            suffix.append("reuse")
        if self.window != (0.0, 1.0):
            suffix.append(f"w{self.window[0]:g}-{self.window[1]:g}")
        if self.depths:
            suffix.append(f"depths{len(self.depths)}")
        name = "_".join([f"{task}_{length}", *suffix])
        return BabilongConfig(
            name=name,
            description=config_description(task, length, name),
            task=task,
            length=length,
            num_test=num_test,
            num_train=num_train,
            seed=self.seed,
            babi_source=self.babi_source,
            tokenizer=self.tokenizer,
            allow_reuse=self.allow_reuse,
            window=self.window,
            depths=self.depths,
            splitter=self.splitter,
            length_table=self.length_table,
            story_filter=self.story_filter,
            fill=self.fill,
        )


def registered_or_custom(config: BabilongConfig) -> BabilongConfig:
    """The builder's registered config of that name (TFDS refuses a custom config named like
    one), which the default options make; else `config` itself."""
    registered = Builder.builder_configs.get(config.name)
    if registered is None:
        return config
    if registered != config:
        raise ValueError(f"config {config.name!r} differs from the registered one: {config} "
                         f"!= {registered}")
    return registered


def splits_of(options: BuildOptions) -> list[str]:
    return ["test", "train"] if options.split == "all" else [options.split]


def _jsonable(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


# An export writing `{name}` owns `.{name}.{pid}.{8 hex}.tmp` while it runs. Earlier versions
# named it `.{name}.{8 of [a-z0-9_]}.tmp` (tempfile.mkstemp), without a pid.
LEGACY_TMP_AGE_S = 3600


def remove_stale_tmp(path: Path) -> list[Path]:
    """Removes the temporary files that killed exports of `path` left: those named with the
    pid of a process that is gone, and unnamed (earlier) ones untouched for an hour (a
    running export writes to its file continuously)."""
    if not path.parent.is_dir():
        return []
    name = re.escape(path.name)
    with_pid = re.compile(rf"\.{name}\.(\d+)\.[0-9a-f]{{8}}\.tmp")
    legacy = re.compile(rf"\.{name}\.[a-z0-9_]{{8}}\.tmp")
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        match = with_pid.fullmatch(tmp.name)
        if match:
            stale = not _pid_alive(int(match.group(1)))
        else:
            stale = bool(legacy.fullmatch(tmp.name)) and (
                time.time() - tmp.stat().st_mtime > LEGACY_TMP_AGE_S)
        if stale and tmp.is_file():
            logging.warning("removing %s, left by an interrupted export", tmp)
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def export_jsonl(source, path: Path) -> int:
    """Writes every record of a data source to `path` atomically (removing what killed
    exports of it left); returns the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for i in range(len(source)):
                record = {k: _jsonable(v) for k, v in source[i].items()}
                ordered = {k: record.pop(k) for k in FIELDS_FIRST} | dict(sorted(record.items()))
                f.write(json.dumps(ordered, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return len(source)


def check_output_dir(path: str | os.PathLike, flag: str = "--data_dir") -> None:
    """A local output folder is a folder (or can be made) that this process can write in:
    checked before building, so that a bad --data_dir or --jsonl_dir wastes no build."""
    text = os.fspath(path)
    if "://" in text:
        return  # remote: TFDS reports its own errors
    check_folder_writable(Path(text).absolute(), f"{flag}={text}")


def check_manual_dir(manual_dir: str | os.PathLike, lengths: Sequence[str],
                     options: BuildOptions) -> None:
    """A manual dir holds what the build reads from it: babi/ (unless the stories are
    generated) and haystack/ (above 0k). Without them the builder would go to the network."""
    manual = Path(manual_dir)
    if not manual.is_dir():
        raise FileNotFoundError(
            f"manual dir {manual_dir} does not exist: it should hold babi/ and haystack/"
        )
    missing = []
    if options.babi_source == "files" and not (manual / "babi").is_dir():
        missing.append("babi/ (the bAbI task files, e.g. tasks_1-20_v1-2/en-10k/"
                       "qa1_single-supporting-fact_test.txt, or the official "
                       "tasks_1-20_v1-2.tar.gz)")
    if any(check_length(n, options.length_table) for n in lengths) and not (
            manual / "haystack").is_dir():
        missing.append("haystack/ (book text, .txt or .txt.gz)")
    if missing:
        raise FileNotFoundError(
            f"manual dir {manual} has no {' and no '.join(missing)}: add them there, or build "
            "without --manual_dir to download them"
        )


def check_haystack_size(manual_dir: str | os.PathLike, tasks: Sequence[str],
                        lengths: Sequence[str], options: BuildOptions) -> None:
    """Without `allow_reuse`, every length fits the manual dir's haystack: checked for all
    lengths before the first is built (the builder finds it only when it reaches that
    length). A length fails when even the sample with the most fact tokens needs more
    background than the books hold; so does the builder, at its first sample.

    Generated stories count as factless (their facts are made per sample): a haystack within
    a story's facts of the budget is refused for them. Skipped where the builder would
    download something (GPT-2 files, books)."""
    long = [n for n in lengths if check_length(n, options.length_table)]
    manual = Path(manual_dir)
    if options.allow_reuse or not long or not (manual / "haystack").is_dir():
        return
    if options.tokenizer == DEFAULT_TOKENIZER and find_gpt2_dir([manual]) is None:
        return
    tokenizer = get_tokenizer(options.tokenizer, search_dirs=[manual])
    haystack = Haystack.build(load_books_from_dir(manual / "haystack"), tokenizer,
                              splitter=options.splitter)
    recipe = Recipe(lengths=options.length_table, story_filter=options.story_filter,
                    fill=options.fill)
    composer = Composer(haystack, tokenizer, recipe=recipe)
    for length in long:
        budget = composer.context_budget(length)
        if budget <= haystack.num_tokens:
            continue
        most_facts = 0
        if options.babi_source == "files":
            for task in tasks:
                for split in splits_of(options):
                    pool = StoryPool(task, split, babi_root=manual / "babi", seed=options.seed)
                    most_facts = max([most_facts, *(composer.fact_token_count(s)
                                                    for s in pool.eligible(composer, length))])
        if budget - most_facts > haystack.num_tokens:
            raise ValueError(
                f"length {length} needs at least {budget - most_facts:,} tokens of book text "
                f"a sample, and the haystack of {manual / 'haystack'} holds "
                f"{haystack.num_tokens:,}: add books, or allow reuse of books explicitly "
                "(--allow_reuse); nothing was built"
            )


@dataclasses.dataclass
class BuildResult:
    task: str
    length: str
    split: str
    config: str
    samples: int
    mean_tokens: float
    seconds: float
    jsonl: str | None


def _beam_download_options(beam_options: str | None) -> dict:
    if beam_options is None:
        return {}
    try:
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError as e:
        raise ValueError(
            "Beam pipeline options need apache_beam: pip install -e '.[beam]', or build "
            "without them"
        ) from e
    flags = [f"--{option.strip()}" for option in beam_options.split(",") if option.strip()]
    return {"beam_options": PipelineOptions(flags)}


def build(
    tasks: str | Sequence[str],
    lengths: str | Sequence[str],
    *,
    data_dir: str | os.PathLike,
    manual_dir: str | os.PathLike | None = None,
    jsonl_dir: str | os.PathLike | None = None,
    options: BuildOptions = BuildOptions(),
    progress=None,
    beam_options: str | None = None,
) -> list[BuildResult]:
    """Builds every (task, length) dataset; validates all names before building anything.

    beam_options: Apache Beam pipeline options as `tfds build --beam_pipeline_options` takes
    them ('direct_num_workers=8,direct_running_mode=multi_processing'): the records are then
    made by a Beam pipeline, byte for byte as without."""
    task_list = parse_tasks(tasks)
    length_list = parse_lengths(lengths)
    check_output_dir(data_dir, "--data_dir")
    if jsonl_dir is not None:
        check_output_dir(jsonl_dir, "--jsonl_dir")
    if manual_dir is not None:
        check_manual_dir(manual_dir, length_list, options)
        check_haystack_size(manual_dir, task_list, length_list, options)
    download_config = tfds.download.DownloadConfig(
        manual_dir=os.fspath(manual_dir) if manual_dir is not None else None,
        **_beam_download_options(beam_options),
    )
    results = []
    for task in task_list:
        for length in length_list:
            start = time.perf_counter()
            config = registered_or_custom(options.config(task, length))
            builder = Builder(config=config, data_dir=os.fspath(data_dir))
            config_dir = Path(builder.data_dir).parent
            existed = config_dir.exists()
            try:
                builder.download_and_prepare(
                    file_format="array_record", download_config=download_config
                )
            except BaseException:
                # TFDS removed its temporary folder; drop the empty folder it made for it.
                if not existed and config_dir.exists() and not any(config_dir.iterdir()):
                    config_dir.rmdir()
                raise
            seconds = time.perf_counter() - start
            for split in splits_of(options):
                source = tfds.data_source(
                    f"babilong/{config.name}", split=split, data_dir=os.fspath(data_dir)
                )
                tokens = [int(source[i]["num_tokens"]) for i in range(len(source))]
                jsonl = None
                if jsonl_dir is not None:
                    name = f"{length}.jsonl" if split == "test" else f"{length}_{split}.jsonl"
                    jsonl_path = Path(jsonl_dir) / task / name
                    export_jsonl(source, jsonl_path)
                    jsonl = str(jsonl_path)
                results.append(
                    BuildResult(
                        task=task,
                        length=length,
                        split=split,
                        config=config.name,
                        samples=len(source),
                        mean_tokens=float(np.mean(tokens)) if tokens else 0.0,
                        seconds=seconds,
                        jsonl=jsonl,
                    )
                )
            if progress is not None:
                progress.update(1)
    return results


def format_table(results: Sequence[BuildResult]) -> str:
    header = f"{'task':<6}{'length':>7}{'split':>7}{'samples':>9}{'mean tokens':>13}{'seconds':>9}"
    rows = [header, "-" * len(header)]
    for r in results:
        rows.append(
            f"{r.task:<6}{r.length:>7}{r.split:>7}{r.samples:>9}{r.mean_tokens:>13.0f}"
            f"{r.seconds:>9.1f}"
        )
    return "\n".join(rows)


def _records_of(source):
    """The records of a TFDS data source as JSON-able dicts, read one at a time."""
    for i in range(len(source)):
        yield {k: _jsonable(v) for k, v in source[i].items()}


def export_hf_dir(
    results: Sequence[BuildResult], *, data_dir: str | os.PathLike, hf_dir: str | os.PathLike
) -> list[Path]:
    """Writes the built splits of `results` into `hf_dir` in the layout of the published
    `RMT-team/babilong` sets (one config per length, one split per task: see
    `babilong_tfds.published.write_hf_dir`, atomic). One split of the build goes there."""
    splits = sorted({r.split for r in results})
    if len(splits) != 1:
        raise ValueError(
            f"--hf_dir holds one split per task and config, and the build made {splits}: "
            "build --split=test (or train) for it"
        )
    samples = {}
    for r in results:
        source = tfds.data_source(
            f"babilong/{r.config}", split=r.split, data_dir=os.fspath(data_dir)
        )
        samples[(r.task, r.length)] = _records_of(source)
    return write_hf_dir(hf_dir, samples)
