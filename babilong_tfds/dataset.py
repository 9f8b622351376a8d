"""BABILong records: materialized splits (for the TFDS builder) and an on-the-fly source.

Both draw bAbI samples from the original files (`babi_source='files'`) or from the world
simulator (`babi_source='generated'`), hide them in haystack text with a `Composer`, and
produce records with the published field names (`input`, `question`, `target`) plus
`task`, `length`, `num_tokens`, `fact_offsets` (token offset of each inserted fact in the
context), `facts`, `supporting`, `book_ids`, `seed`, `index`, `depth` and `origin`.

Randomness: record `i` of a split depends on (seed, task, length, split, i) alone, and
record `i` of the on-the-fly source on (seed, i) alone, so records can be made in any
order, by any worker, and come out byte-identical.

Paired questions (`question_order`): from the bAbI files, the questions of a split are put
in one random order that depends on (seed, task, split) and not on the length; record `i`
of every length asks question `order[i]` on its story wherever that story passes the
length's filter, so length curves are paired as in the published sets. Where it does not,
record `i` takes the next eligible question from `order[num_samples:]` (each once), then,
if those run out, the eligible questions again in order.

Which bAbI files: the test split is made from the bAbI `*_test.txt` files (en-10k v1.2
preferred, as `babi.PREFERRED_VARIANTS` says), the train split from `*_train.txt`. The
official `create_tasks.py` reads `*_train.txt` for every set, but the published test sets
match the en-10k *test* files (the 1000-sample set holds every question of the 1000-question
test file in file order, and 862 qa3 questions at 1k, as the test file gives), so we follow
the published data. The en-10k qa3 train file is missing offline: qa3's train split then
falls back to v1.1 with a warning.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from babilong_tfds.babi import SPLITS, BabiSample, load_babi
from babilong_tfds.babi_generator import PARAMETERS, check_recency
from babilong_tfds.compose import Composer, Composition, CompositionError, Placement
from babilong_tfds.tasks import LENGTHS, TASKS, check_length, check_task

BABI_SOURCES = ("files", "generated")
# Stories drawn from the simulator for one record before giving up on the length filter.
MAX_GENERATED_TRIES = 64


def check_babi_source(babi_source: str) -> str:
    if babi_source not in BABI_SOURCES:
        raise ValueError(
            f"unknown babi_source {babi_source!r}: expected one of {', '.join(BABI_SOURCES)}"
        )
    return babi_source


def check_story_questions(story_questions, babi_source: str = "generated") -> int:
    """`story_questions` as an int >= 0 (0: each task's own story length); a ValueError
    naming the fix otherwise, or when it is set for stories read from the bAbI files."""
    if isinstance(story_questions, bool) or not isinstance(story_questions, numbers.Integral) \
            or story_questions < 0:
        raise ValueError(f"story_questions must be an integer >= 0 (0: each task's own story "
                         f"length), got {story_questions!r}")
    if story_questions and babi_source != "generated":
        raise ValueError(f"story_questions={story_questions} shortens simulated stories, but "
                         f"babi_source={babi_source!r} reads the bAbI files: use "
                         "babi_source='generated' or story_questions=0")
    return int(story_questions)


def _task_no(task: str) -> int:
    return TASKS.index(task) + 1


def record_rng(*keys: int) -> np.random.Generator:
    """A generator that depends on the integer keys alone."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


def compose_sample(
    composer: Composer,
    sample: BabiSample,
    length: str,
    rng: np.random.Generator,
    *,
    window: tuple[float, float] = (0.0, 1.0),
    depth: float | None = None,
) -> Composition:
    """Composes with facts uniform in `window`, or at `depth` (the needle sweep).

    At a depth, a story with a single supporting fact gets that fact at the depth, the
    facts before it anywhere before and those after anywhere after (order kept); a story
    with several supporting facts gets every fact at the depth.
    """
    if depth is None:
        return composer.compose(sample, length, rng, Placement(window=window))
    composition = composer.compose(sample, length, rng, Placement(depth=depth))
    if len(sample.supporting) != 1 or len(sample.facts) == 1:
        return composition
    # Single supporting fact: spread the others before and after the needle, order kept.
    needle = sample.supporting[0]
    k = int(composition.boundaries[needle])
    before = rng.integers(0, k + 1, size=needle) if needle else np.zeros(0, np.int64)
    n_after = len(sample.facts) - needle - 1
    n_bg = sum(b - a for a, b in composition.background.runs)
    after = rng.integers(k, n_bg + 1, size=n_after)
    boundaries = np.concatenate([np.sort(before), [k], np.sort(after)]).astype(np.int64)
    return composer.recompose(composition, boundaries)


def to_record(
    composition: Composition,
    composer: Composer,
    *,
    seed: int,
    index: int,
    depth: float | None = None,
    with_text: bool = True,
    with_ids: bool = False,
) -> dict:
    sample = composition.sample
    record = {
        "question": sample.file_question or sample.question,  # as the file (and published)
        "target": sample.answer,
        "task": sample.task,
        "length": str(composition.length),
        "num_tokens": composition.num_tokens,
        "fact_offsets": np.asarray(composition.fact_offsets, np.int64),
        "facts": list(sample.facts),
        "supporting": np.asarray(sample.supporting, np.int64),
        "book_ids": list(composition.background.book_ids),
        "seed": seed,
        "index": index,
        "depth": -1.0 if depth is None else float(depth),
        "origin": sample.origin,
    }
    if with_text:
        record["input"] = composition.text(composer.haystack)
    if with_ids:
        record["input_ids"] = composition.token_ids(composer.haystack)
    return record


class StoryPool:
    """The bAbI samples of one task and split, from the files or the simulator."""

    def __init__(
        self,
        task: str,
        split: str,
        *,
        babi_source: str = "files",
        babi_root: str | Path | None = None,
        seed: int = 0,
        synonyms: bool = False,
        question_recency: float | None = None,
        story_questions: int = 0,
    ):
        self.task = check_task(task)
        self.synonyms = synonyms  # generated stories: also our verbs, not only bAbI's
        # generated stories: the chance to ask about the last two statements (None: bAbI's)
        self.question_recency = check_recency(question_recency)
        # generated stories: end after at most this many questions (0: the task's own)
        self.story_questions = check_story_questions(story_questions, babi_source)
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
        self.split = split
        self.babi_source = check_babi_source(babi_source)
        self.seed = seed
        if babi_source == "files":
            if babi_root is None:
                raise ValueError("babi_source='files' needs babi_root: the folder of bAbI files")
            self.samples: list[BabiSample] | None = load_babi(task, split, babi_root)
        else:
            self.samples = None
        self._eligible: dict[tuple, np.ndarray] = {}
        self._eligible_lists: dict[tuple, list[BabiSample]] = {}

    def eligible_mask(self, composer: Composer, length: str | int,
                      limit: int | None = None) -> np.ndarray:
        """[len(samples)] bool: which file samples pass the composer's filter at `length`
        (and facts of at most `limit` tokens, if given); a CompositionError when none does."""
        if (length, limit) not in self._eligible:
            assert self.samples is not None
            mask = np.fromiter((composer.fits(s, length, limit) for s in self.samples), bool,
                               len(self.samples))
            if not mask.any() and not isinstance(length, str):
                if limit is not None:
                    raise CompositionError(
                        f"no {self.task} story at length {length} has facts of at most "
                        f"{limit} tokens (max_tokens; in training, the context of one "
                        "segment): raise it")
                raise CompositionError(
                    f"no {self.task} story's facts fit in {length} tokens: use longer contexts"
                )
            if not mask.any():
                shortest = min(self.samples, key=lambda s: len(s.facts))
                need = next((name for name in LENGTHS if LENGTHS[name]
                             and composer.fits(shortest, name)), "none")
                if composer.recipe.story_filter == "lines":
                    why = (f"the shortest story has {len(shortest.facts)} facts, more than "
                           f"{composer.max_story_lines(length)} lines minus the question")
                else:
                    why = (f"the shortest story's facts take "
                           f"{composer.fact_token_count(shortest)} tokens, more than "
                           f"length/8 = {composer.length_tokens(length) // 8}")
                raise CompositionError(
                    f"length {length} is too small for any {self.task} story: {why}; the "
                    f"smallest length that fits is {need}"
                )
            self._eligible[length, limit] = mask
        return self._eligible[length, limit]

    def eligible(self, composer: Composer, length: str | int,
                 limit: int | None = None) -> list[BabiSample]:
        """File samples that pass the filter at `length` (see `eligible_mask`)."""
        key = (length, limit)
        if key not in self._eligible_lists:
            mask = self.eligible_mask(composer, length, limit)
            self._eligible_lists[key] = [s for s, ok in zip(self.samples, mask, strict=True)
                                         if ok]
        return self._eligible_lists[key]

    def question_order(
        self, composer: Composer, length: str, num_samples: int, keys: Sequence[int]
    ) -> list[int]:
        """Indices into `samples` of records 0..num_samples-1 at `length` (paired: see the
        module docstring). `keys` seed the one order shared by every length."""
        mask = self.eligible_mask(composer, length)
        order = record_rng(*keys).permutation(len(self.samples))
        head, rest = order[:num_samples], order[num_samples:]
        spare = iter(int(j) for j in rest if mask[j])
        eligible = [int(j) for j in order if mask[j]]
        picked, again = [], 0
        for i in range(num_samples):
            if i < len(head) and mask[head[i]]:
                picked.append(int(head[i]))
                continue
            j = next(spare, None)
            if j is None:
                j, again = eligible[again % len(eligible)], again + 1
            picked.append(j)
        return picked

    @functools.cached_property
    def _story_params(self) -> dict[str, int]:
        """The simulator's parameters: num_questions capped at `story_questions`."""
        spec = PARAMETERS[self.task].get("num_questions")
        if not self.story_questions or spec is None:
            return {}
        return {"num_questions": min(self.story_questions, spec[0])}

    def generated(
        self, composer: Composer, length: str | int, rng: np.random.Generator,
        limit: int | None = None,
    ) -> BabiSample:
        """A fresh simulated story's question that fits `length` (and facts of at most
        `limit` tokens, if given)."""
        from babilong_tfds.babi_generator import generate_story

        # Train and test draw from disjoint simulator seeds.
        sim_seed = self.seed * len(SPLITS) + SPLITS.index(self.split)
        for _ in range(MAX_GENERATED_TRIES):
            story = generate_story(self.task, sim_seed, int(rng.integers(1 << 62)),
                                   synonyms=self.synonyms, recency=self.question_recency,
                                   **self._story_params)
            sample = story[int(rng.integers(len(story)))]
            if composer.fits(sample, length, limit):
                return sample
        if limit is not None:
            raise CompositionError(
                f"none of {MAX_GENERATED_TRIES} simulated {self.task} stories drawn at "
                f"length {length} has facts of at most {limit} tokens (max_tokens; in "
                "training, the context of one segment): raise it"
            )
        raise CompositionError(
            f"length {length} is too small for the simulated {self.task} stories: none of "
            f"{MAX_GENERATED_TRIES} drawn fits within length/8 tokens; use a longer length"
        )


def generate_split(
    composer: Composer,
    task: str,
    length: str,
    split: str,
    num_samples: int,
    *,
    seed: int = 0,
    babi_source: str = "files",
    babi_root: str | Path | None = None,
    window: tuple[float, float] = (0.0, 1.0),
    depths: Sequence[float] | None = None,
    pool: StoryPool | None = None,
    with_text: bool = True,
    with_ids: bool = False,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[tuple[int, dict]]:
    """Yields (key, record) for a split; with `depths`, each sample at every depth.

    `start` and `stop` make records start..stop-1 of a split of `num_samples` (default: all
    of them), the same as in the whole split, without making the others: the Beam build
    makes a split in ranges this way.

    Records carry the context as `input` text (`with_text`, what the TFDS splits store) and/or
    as `input_ids` (`with_ids`: the composer's tokens, no second pass of the tokenizer).
    """
    check_task(task)
    tokens = check_length(length)
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    pool = pool or StoryPool(task, split, babi_source=babi_source, babi_root=babi_root, seed=seed)
    split_no = SPLITS.index(split)
    keys = (seed, _task_no(task), tokens, split_no)
    order = None
    if pool.samples is not None:
        # One question order for every length (no length in its keys): paired samples.
        order = pool.question_order(composer, length, num_samples,
                                    (seed, _task_no(task), split_no, 1 << 40))
    sweep = list(depths) if depths else [None]
    for i in range(start, num_samples if stop is None else min(stop, num_samples)):
        rng = record_rng(*keys, i)
        if order is not None:
            sample = pool.samples[order[i]]
        else:
            sample = pool.generated(composer, length, rng)
        for j, depth in enumerate(sweep):
            composition = compose_sample(composer, sample, length, rng, window=window, depth=depth)
            key = i * len(sweep) + j
            yield key, to_record(composition, composer, seed=seed, index=i, depth=depth,
                                 with_text=with_text, with_ids=with_ids)


class BabilongSource:
    """Random-access BABILong samples made on the fly (a grain `RandomAccessDataSource`).

    `source[i]` is deterministic in (seed, i): a task and a length drawn from the mixes (a
    length is a name such as '4k', or an int: the context size in tokens, for training), a
    bAbI question drawn from the pool of that task, composed into haystack text. Records
    carry `input_ids` (int32 context tokens), `question_ids` and `target_ids`, and `input`
    text only when `with_text`. With `max_tokens`, only stories whose facts take at most that
    many tokens are drawn (what bounds a bare story, at length 0, to a training segment).
    With `length_group` g > 1 the length is drawn once for records g*j .. g*j + g - 1 (a
    global training batch of g rows: every row the same length); the rest of a record is
    drawn as with g = 1. `length_weights` (one per length, summing to 1) draws the lengths at
    those shares instead of uniformly.
    """

    def __init__(
        self,
        composer: Composer,
        tasks: Sequence[str],
        lengths: Sequence[str | int],
        *,
        seed: int = 0,
        split: str = "train",
        babi_source: str = "generated",
        babi_root: str | Path | None = None,
        num_records: int = (1 << 31) - 1,
        with_text: bool = False,
        synonyms: bool = False,
        max_tokens: int | None = None,
        question_recency: float | None = None,
        story_questions: int = 0,
        length_group: int = 1,
        length_weights: Sequence[float] | None = None,
    ):
        if not tasks or not lengths:
            raise ValueError("BabilongSource needs at least one task and one length")
        self.tasks = [check_task(t) for t in tasks]
        self.lengths = list(lengths)
        for length in self.lengths:
            if isinstance(length, str):
                check_length(length)
            elif int(length) < 0:
                raise ValueError(f"context length {length} must be >= 0 tokens")
        self.composer = composer
        self.seed = int(seed)
        self.split = split
        self.babi_source = check_babi_source(babi_source)
        self.babi_root = babi_root
        self.num_records = int(num_records)
        self.with_text = with_text
        self.synonyms = synonyms  # 'generated': our verbs too (babilong_tfds.babi_generator)
        # 'generated': the chance a question asks about one of the last two statements
        # (None: each task's own, as in bAbI; babilong_tfds.babi_generator)
        self.question_recency = check_recency(question_recency)
        # 'generated': stories end after at most this many questions (0: each task's own),
        # so that they are shorter (qa1 asks after every two statements)
        self.story_questions = check_story_questions(story_questions, babi_source)
        # stories whose facts take more tokens are not drawn (a bare 0-token story is its
        # facts alone: this bounds its size)
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens={max_tokens} must be >= 1 (or None)")
        self.max_tokens = max_tokens
        if isinstance(length_group, bool) or int(length_group) != length_group or length_group < 1:
            raise ValueError(f"length_group={length_group!r} must be an integer >= 1 (records "
                             "that share one drawn length)")
        self.length_group = int(length_group)
        self.length_cdf = None  # None: every length equally likely
        if length_weights is not None:
            weights = np.asarray(length_weights, np.float64)
            if weights.shape != (len(self.lengths),) or (weights < 0).any() \
                    or not np.isclose(weights.sum(), 1.0):
                raise ValueError(f"length_weights={list(length_weights)}: expected one share "
                                 f">= 0 per length ({len(self.lengths)}), summing to 1")
            self.length_cdf = np.cumsum(weights)

    def _length(self, rng: np.random.Generator) -> str | int:
        """One length drawn from `rng` (uniformly, or at `length_weights`)."""
        if self.length_cdf is None:
            return self.lengths[int(rng.integers(len(self.lengths)))]
        at = int(np.searchsorted(self.length_cdf, rng.random(), side="right"))
        return self.lengths[min(at, len(self.lengths) - 1)]

    @functools.cached_property
    def _pools(self) -> dict[str, StoryPool]:
        return {
            t: StoryPool(
                t,
                self.split,
                babi_source=self.babi_source,
                babi_root=self.babi_root,
                seed=self.seed,
                synonyms=self.synonyms,
                question_recency=self.question_recency,
                story_questions=self.story_questions,
            )
            for t in self.tasks
        }

    def __len__(self) -> int:
        return self.num_records

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < self.num_records:
            raise IndexError(f"index {index} out of range [0, {self.num_records})")
        rng = record_rng(self.seed, 0xBAB1, index)
        task = self.tasks[int(rng.integers(len(self.tasks)))]
        length = self._length(rng)
        if self.length_group > 1:  # one draw per group; `rng` went on as with g = 1
            length = self._length(record_rng(self.seed, 0x1E76, index // self.length_group))
        pool = self._pools[task]
        if pool.samples is not None:
            eligible = pool.eligible(self.composer, length, self.max_tokens)
            sample = eligible[int(rng.integers(len(eligible)))]
        else:
            sample = pool.generated(self.composer, length, rng, self.max_tokens)
        composition = self.composer.compose(sample, length, rng)
        record = to_record(
            composition,
            self.composer,
            seed=self.seed,
            index=index,
            with_text=self.with_text,
            with_ids=True,
        )
        tok = self.composer.tokenizer
        record["question_ids"] = np.asarray(tok.encode(sample.question), np.int32)
        record["target_ids"] = np.asarray(tok.encode(sample.answer), np.int32)
        return record

    def __repr__(self) -> str:
        return (
            f"BabilongSource(tasks={self.tasks}, lengths={self.lengths}, seed={self.seed}, "
            f"babi_source={self.babi_source!r}, num_records={self.num_records})"
        )
