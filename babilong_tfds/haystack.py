"""The haystack: book text split into sentences, tokenized once, sampled by token budget.

Sources of books:
  * a folder of `.txt` / `.txt.gz` files (`load_books_from_dir`), e.g. `../shared/data/haystack`;
  * PG19's test split (`load_pg19`): from a prepared TFDS `pg19` dataset, or downloaded
    book by book through a TFDS download manager (the reference uses this split).

Project Gutenberg headers and licence footers are stripped. Two splitters (`SPLITTERS`):

  'punkt' (the default, as the official generator): NLTK's untrained
      `PunktSentenceTokenizer()` (no download) over each book as it stands, so a sentence
      keeps the book's own line breaks; sentences under `MIN_SENTENCE_TOKENS` tokens of the
      counting tokenizer are skipped.
  'blingfire' (the legacy option): paragraphs unwrapped to single lines, Blingfire's
      sentence breaker with a join for titles ("Mr."), sentences under `MIN_WORDS` words
      dropped.

`Haystack` keeps every kept sentence's text and tokens in flat arrays, so that sampling a
budget of N tokens is a few binary searches and array slices, whatever N is. It also keeps
the character span of every sentence the splitter found (kept or not), which the official
sampling rule reads (`HaystackSampler.sample_exact`). Tokenizing the books is the slow part
(tens of seconds for 30 MB); `Haystack.build` caches the result on disk keyed by the books'
bytes, the tokenizer and the splitter settings.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import json
import os
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import logging

from babilong_tfds.files import atomic_write

SPLITTERS = ("punkt", "blingfire")
DEFAULT_SPLITTER = "punkt"
# 'punkt': sentences with fewer tokens than this are skipped (the official generator's rule).
MIN_SENTENCE_TOKENS = 10
# 'blingfire': sentences with fewer words than this ("Yes.", chapter titles) are dropped.
MIN_WORDS = 3
# Bump when splitting or cleaning changes, so that caches are rebuilt (and recorded in the
# dataset metadata).
SPLITTER_VERSIONS = {"punkt": "punkt-1", "blingfire": "blingfire-2"}
# The layout of the cached arrays (2: sentence spans and kept flags, text with line breaks).
CACHE_FORMAT = "cache-2"
# The official sampler reads a window of this many characters per token of the budget; we
# read at least MIN_WINDOW_CHARS, so that a tiny budget (the reference loops forever on one)
# still finds a whole sentence. Where the window holds the budget, its size changes nothing.
WINDOW_CHARS_PER_TOKEN = 10
MIN_WINDOW_CHARS = 10_000
# Draws of a book that yield no sentence before the exact sampler gives up.
MAX_EMPTY_DRAWS = 1000

_START = re.compile(
    r"^\s*\*\*\*\s*START OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK[^\n]*$", re.I | re.M
)
_END = re.compile(r"^\s*\*\*\*\s*END OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK[^\n]*$", re.I | re.M)
_OLD_END = re.compile(r"^\s*End of (?:the )?Project Gutenberg", re.I | re.M)
# Titles that Blingfire sometimes takes for a sentence end ("Yes. Dr. Watson ..."): a
# sentence ending in one of them is joined to the next.
_TITLES = frozenset(
    "Mr. Mrs. Ms. Dr. St. M. Mme. Mlle. Messrs. Capt. Col. Gen. Lieut. Sgt. Rev. Prof. Hon. "
    "Gov. Sen. Rep. Fr. Sr. Mt.".split()
)
_PARAGRAPH = re.compile(r"\n\s*\n")

PG19_BUCKET = "https://storage.googleapis.com/deepmind-gutenberg"
PG19_LISTING = (
    "https://storage.googleapis.com/storage/v1/b/deepmind-gutenberg/o?prefix={split}/"
    "&fields=items(name),nextPageToken&maxResults=1000"
)


class HaystackError(ValueError):
    """The haystack cannot serve the request (no usable book, or too small)."""


@dataclasses.dataclass(frozen=True)
class Book:
    """One book's text, already stripped of Project Gutenberg boilerplate."""

    book_id: str
    text: str


def strip_gutenberg(text: str) -> str:
    """The book between the '*** START OF ...' and '*** END OF ...' lines, if present."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    start = _START.search(text)
    if start:
        text = text[start.end() :]
    ends = [m.start() for m in (_END.search(text), _OLD_END.search(text)) if m]
    if ends:
        text = text[: min(ends)]
    return text.strip()


def check_splitter(splitter: str) -> str:
    if splitter not in SPLITTERS:
        raise ValueError(f"unknown splitter {splitter!r}: expected one of {', '.join(SPLITTERS)}")
    return splitter


def split_sentences(text: str, min_words: int = MIN_WORDS) -> list[str]:
    """The 'blingfire' splitter: unwraps paragraphs, splits them into sentences, drops the
    very short ones."""
    paragraphs = (" ".join(p.split()) for p in _PARAGRAPH.split(text))
    joined = "\n".join(p for p in paragraphs if p)
    if not joined:
        return []
    import blingfire  # here, not at the top: a cached haystack loads without it

    sentences: list[str] = []
    carry = ""
    for sentence in blingfire.text_to_sentences(joined).split("\n"):
        sentence = f"{carry} {sentence}" if carry else sentence
        if sentence.rsplit(" ", 1)[-1] in _TITLES:
            carry = sentence
            continue
        carry = ""
        sentences.append(sentence)
    if carry:
        sentences.append(carry)
    return [s for s in sentences if len(s.split(" ")) >= min_words]


@functools.cache
def _punkt():
    import nltk  # here, not at the top: a cached haystack loads without it

    return nltk.PunktSentenceTokenizer()  # untrained: no download


def punkt_spans(text: str) -> list[tuple[int, int]]:
    """The 'punkt' splitter: (start, end) character spans of the sentences of `text`, as NLTK's
    untrained Punkt finds them (line breaks inside a sentence stay in it)."""
    return list(_punkt().span_tokenize(text)) if text.strip() else []


def _decode_book(path: Path) -> str | None:
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            logging.warning("skipping book %s: not a valid gzip file (%s)", path, e)
            return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        logging.warning("skipping book %s: not UTF-8 (%s); re-encode it as UTF-8", path, e)
        return None


def _book_id(path: Path) -> str:
    name = path.name
    for suffix in (".txt.gz", ".txt"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_books_from_dir(directory: str | os.PathLike) -> list[Book]:
    """Every usable `.txt` / `.txt.gz` book under `directory` (recursively), sorted by path.

    Empty, non-UTF-8 or broken files are skipped with a warning; an error when none is left.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise HaystackError(
            f"haystack folder {directory} does not exist: put .txt or .txt.gz books there "
            "(e.g. ../shared/data/haystack), or use PG19"
        )
    paths = sorted(
        p for p in directory.rglob("*") if p.is_file() and p.name.endswith((".txt", ".txt.gz"))
    )
    books = []
    for path in paths:
        text = _decode_book(path)
        if text is None:
            continue
        body = strip_gutenberg(text)
        if not body.strip():
            logging.warning("skipping book %s: it is empty", path)
            continue
        books.append(Book(_book_id(path), body))
    if not books:
        raise HaystackError(
            f"no usable book under {directory}: found {len(paths)} .txt/.txt.gz files, none "
            "non-empty UTF-8 text"
        )
    return books


def load_pg19(
    split: str = "test",
    *,
    data_dir: str | None = None,
    dl_manager=None,
    max_books: int | None = None,
) -> list[Book]:
    """PG19 books of one split, as the reference uses (its test split by default).

    With `dl_manager` (a `tfds.download.DownloadManager`), the bucket listing and then each
    book are downloaded (and cached) by it. Without it, a prepared TFDS `pg19` dataset is read
    from `data_dir` through `tfds.data_source`.
    """
    if dl_manager is not None:
        listing = Path(dl_manager.download(PG19_LISTING.format(split=split)))
        names = sorted(item["name"] for item in json.loads(listing.read_text())["items"])
        names = [n for n in names if n.endswith(".txt")][:max_books]
        paths = dl_manager.download({n: f"{PG19_BUCKET}/{n}" for n in names})
        books = []
        for name in names:
            text = _decode_book(Path(paths[name]))
            if text and text.strip():
                books.append(Book(Path(name).stem, strip_gutenberg(text)))
        if not books:
            raise HaystackError(f"PG19 {split}: no usable book was downloaded")
        return books
    import tensorflow_datasets as tfds

    source = tfds.data_source("pg19", split=split, data_dir=data_dir)
    count = len(source) if max_books is None else min(max_books, len(source))
    books = []
    for i in range(count):
        record = source[i]
        text = record["book_text"]
        text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
        book_id = record["book_id"]
        books.append(Book(str(book_id), strip_gutenberg(text)))
    return books


def _fingerprint(books: Sequence[Book], tokenizer, splitter: str, min_words: int) -> str:
    h = hashlib.sha256()
    rule = MIN_SENTENCE_TOKENS if splitter == "punkt" else min_words
    h.update(f"{CACHE_FORMAT}|{SPLITTER_VERSIONS[splitter]}|{rule}|{tokenizer.fingerprint}"
             .encode())
    for book in books:
        h.update(book.book_id.encode() + b"\0")
        h.update(hashlib.sha256(book.text.encode("utf-8")).digest())
    return h.hexdigest()[:24]


def default_cache_dir() -> Path:
    return Path(os.environ.get("BABILONG_CACHE", Path.home() / ".cache" / "babilong_tfds"))


@dataclasses.dataclass
class Haystack:
    """The kept sentences of a set of books, with their tokens, in flat arrays.

    Attributes:
      book_ids: [n_books] the id of each book.
      book_starts: [n_books + 1] the first kept sentence of each book (and the total count).
      sentences: [n_sentences] the kept sentence texts.
      offsets: [n_sentences + 1] int64: sentence i has tokens[offsets[i]:offsets[i + 1]].
      tokens: [n_tokens] int32 token ids of every kept sentence, back to back.
      tokenizer_name: which tokenizer produced `tokens`.
      splitter: which splitter found the sentences ('punkt' or 'blingfire').
      span_starts, span_ends: [n_found] int64 character span, in its book's text, of every
        sentence the splitter found, kept or not (for 'blingfire': positions in the
        unwrapped sentences joined by spaces).
      found_starts: [n_books + 1] the first found sentence of each book.
      kept_before: [n_found + 1] int64 kept sentences (over all books) before each found one.
      book_chars: [n_books] characters of each book's text.
    """

    book_ids: list[str]
    book_starts: np.ndarray
    sentences: list[str]
    offsets: np.ndarray
    tokens: np.ndarray
    tokenizer_name: str = ""
    splitter: str = DEFAULT_SPLITTER
    span_starts: np.ndarray | None = None
    span_ends: np.ndarray | None = None
    found_starts: np.ndarray | None = None
    kept_before: np.ndarray | None = None
    book_chars: np.ndarray | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def num_sentences(self) -> int:
        return len(self.sentences)

    @classmethod
    def build(
        cls,
        books: Sequence[Book],
        tokenizer,
        *,
        splitter: str = DEFAULT_SPLITTER,
        min_words: int = MIN_WORDS,
        cache_dir: str | os.PathLike | None = None,
        use_cache: bool = True,
    ) -> Haystack:
        """Splits and tokenizes `books` (or loads the cached result of doing so)."""
        check_splitter(splitter)
        if not books:
            raise HaystackError("no book given to build a haystack from")
        key = _fingerprint(books, tokenizer, splitter, min_words)
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        path = cache / f"haystack-{key}.npz"
        if use_cache and path.exists():
            try:
                return cls._load(path)
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
                # Cut short or damaged (a full disk, a killed copy): made again and rewritten.
                logging.warning("haystack cache %s is unreadable (%s: %s); rebuilding", path,
                                type(e).__name__, e)
        haystack = cls._split_and_encode(books, tokenizer, splitter, min_words)
        if use_cache:
            haystack._save(path)
        return haystack

    @classmethod
    def _split_and_encode(cls, books, tokenizer, splitter: str, min_words: int) -> Haystack:
        per_book: list[tuple[Book, list[str], np.ndarray]] = []
        for book in books:
            if splitter == "punkt":
                spans = np.asarray(punkt_spans(book.text), np.int64).reshape(-1, 2)
                found = [book.text[a:b] for a, b in spans]
            else:
                found = split_sentences(book.text, min_words)
                ends = np.cumsum([len(x) + 1 for x in found], dtype=np.int64) - 1
                spans = np.stack([ends - [len(x) for x in found], ends], axis=1).reshape(-1, 2)
            per_book.append((book, found, spans))
        encoded = tokenizer.encode_sentences([x for _, found, _ in per_book for x in found])
        book_ids, book_starts, sentences, kept_ids = [], [0], [], []
        spans_all, found_starts, book_chars, kept_flags = [], [0], [], []
        pos = 0
        for book, found, spans in per_book:
            ids = encoded[pos : pos + len(found)]
            pos += len(found)
            keep = [splitter != "punkt" or len(x) >= MIN_SENTENCE_TOKENS for x in ids]
            if not any(keep):
                rule = f"{MIN_SENTENCE_TOKENS}+ tokens" if splitter == "punkt" else (
                    f"{min_words}+ words")
                logging.warning("skipping book %s: no sentence of %s", book.book_id, rule)
                continue
            book_ids.append(book.book_id)
            sentences.extend(x for x, k in zip(found, keep, strict=True) if k)
            kept_ids.extend(x for x, k in zip(ids, keep, strict=True) if k)
            book_starts.append(len(sentences))
            spans_all.append(spans)
            kept_flags.extend(keep)
            found_starts.append(found_starts[-1] + len(found))
            book_chars.append(len(book.text) if splitter == "punkt" else int(spans[-1, 1]) + 1)
        if not sentences:
            raise HaystackError("the books hold no usable sentence")
        lengths = np.fromiter((len(e) for e in kept_ids), dtype=np.int64, count=len(kept_ids))
        offsets = np.zeros(len(sentences) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        spans = np.concatenate(spans_all)
        kept_before = np.zeros(len(kept_flags) + 1, np.int64)
        np.cumsum(kept_flags, out=kept_before[1:])
        return cls(
            book_ids=book_ids,
            book_starts=np.asarray(book_starts, dtype=np.int64),
            sentences=sentences,
            offsets=offsets,
            tokens=np.concatenate(kept_ids).astype(np.int32),
            tokenizer_name=tokenizer.name,
            splitter=splitter,
            span_starts=spans[:, 0].copy(),
            span_ends=spans[:, 1].copy(),
            found_starts=np.asarray(found_starts, np.int64),
            kept_before=kept_before,
            book_chars=np.asarray(book_chars, np.int64),
        )

    _ARRAYS = ("book_starts", "offsets", "tokens", "span_starts", "span_ends", "found_starts",
               "kept_before", "book_chars")

    def _save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Sentences hold line breaks: stored as one text and the end of each sentence in it.
        text_ends = np.cumsum([len(x) for x in self.sentences], dtype=np.int64)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez adds no '.npz' to its name
                np.savez(
                    f,
                    book_ids=np.asarray(self.book_ids, dtype=object).astype(str),
                    text=np.frombuffer("".join(self.sentences).encode("utf-8"), np.uint8),
                    text_ends=text_ends,
                    tokenizer_name=np.asarray(self.tokenizer_name),
                    splitter=np.asarray(self.splitter),
                    **{name: getattr(self, name) for name in self._ARRAYS},
                )

        atomic_write(path, write)

    @classmethod
    def _load(cls, path: Path) -> Haystack:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            text = z["text"].tobytes().decode("utf-8")
            ends = z["text_ends"].tolist()
            starts = [0, *ends[:-1]]
            haystack = cls(
                book_ids=[str(b) for b in z["book_ids"]],
                sentences=[text[a:b] for a, b in zip(starts, ends, strict=True)],
                tokenizer_name=str(z["tokenizer_name"]),
                splitter=str(z["splitter"]),
                **{name: z[name] for name in cls._ARRAYS},
            )
        if len(haystack.sentences) + 1 != len(haystack.offsets):
            raise ValueError("sentence count does not match offsets")
        return haystack

    def sentence_lengths(self) -> np.ndarray:
        """[n_sentences] tokens per sentence (computed once: every composition reads it)."""
        if getattr(self, "_lengths", None) is None:
            self._lengths = np.diff(self.offsets)
        return self._lengths


@dataclasses.dataclass(frozen=True)
class Background:
    """Background text chosen for one sample: runs of consecutive sentences.

    `runs[i] = (first, stop)` are global sentence indices [first, stop) of `Haystack`.
    `cut` tokens are dropped from the end of the last sentence of the last run (the official
    rule meets the budget exactly so); `last_text` is that shortened sentence's text, which
    the composer decodes (None when nothing is cut).
    """

    runs: tuple[tuple[int, int], ...]
    num_tokens: int
    book_ids: tuple[str, ...]
    cut: int = 0
    last_text: str | None = None

    @property
    def num_sentences(self) -> int:
        return sum(b - a for a, b in self.runs)


class HaystackSampler:
    """Draws background text of a given token budget from a `Haystack`, two ways.

    `sample_exact` (the official rule): a random book (books drawn with replacement, as the
    reference does) and a random character offset in it; of the sentences of the window of
    `10 * budget` characters (at least 10,000) from there, the first and the last (partial)
    ones are dropped;
    kept sentences are taken in order until the budget is met, the last one cut to its
    exact number of tokens; then another random book and offset.

    `sample` (the legacy rule): a random book and a random sentence in it, consecutive whole
    sentences up to the budget, then another random book when the book ends; a book is used
    once per draw unless `allow_reuse`. When the next sentence would overshoot, later
    sentences of the same book that still fit are taken, so that the draw ends within
    `tolerance` tokens of the budget.

    Either way a haystack smaller than the budget is an error unless `allow_reuse`.
    """

    def __init__(self, haystack: Haystack, *, allow_reuse: bool = False):
        self.haystack = haystack
        self.allow_reuse = allow_reuse
        self._lengths = haystack.sentence_lengths()

    def _check_budget(self, budget: int) -> None:
        if budget > self.haystack.num_tokens and not self.allow_reuse:
            raise HaystackError(
                f"the haystack holds {self.haystack.num_tokens:,} tokens, fewer than the "
                f"{budget:,} asked for: add books, or allow reuse of books explicitly "
                "(allow_reuse=True / --allow_reuse)"
            )

    def sample_exact(self, budget: int, rng: np.random.Generator) -> Background:
        """Sentences totalling exactly `budget` tokens, the last one cut (official rule)."""
        if budget <= 0:
            return Background((), 0, ())
        self._check_budget(budget)
        hs = self.haystack
        offsets = hs.offsets
        window = max(budget * WINDOW_CHARS_PER_TOKEN, MIN_WINDOW_CHARS)
        runs: list[tuple[int, int]] = []
        books: list[str] = []
        remaining, cut, empty = budget, 0, 0
        while remaining > 0:
            book = int(rng.integers(len(hs.book_ids)))
            start = int(rng.integers(hs.book_chars[book]))
            f0, f1 = int(hs.found_starts[book]), int(hs.found_starts[book + 1])
            # Found sentences touching the window: from the one ending after `start` to the
            # one starting before its end; the first and last of them are partial (dropped).
            first = f0 + int(np.searchsorted(hs.span_ends[f0:f1], start, side="right")) + 1
            last = f0 + int(np.searchsorted(hs.span_starts[f0:f1], start + window)) - 1
            k0 = int(hs.kept_before[first])
            k1 = int(hs.kept_before[max(last, first)])
            if k1 <= k0:
                empty += 1
                if empty >= MAX_EMPTY_DRAWS:
                    raise HaystackError(
                        f"{MAX_EMPTY_DRAWS} draws of a book gave no sentence: the books are "
                        "too short for the official sampling rule; add longer books"
                    )
                continue
            empty = 0
            books.append(hs.book_ids[book])
            target = int(offsets[k0]) + remaining
            if int(offsets[k1]) >= target:
                stop = int(np.searchsorted(offsets, target))  # offsets[stop] >= target
                runs.append((k0, stop))
                cut = int(offsets[stop]) - target
                remaining = 0
            else:
                runs.append((k0, k1))
                remaining -= int(offsets[k1] - offsets[k0])
        return Background(tuple(runs), budget, tuple(books), cut=cut)

    def sample(self, budget: int, rng: np.random.Generator, tolerance: int = 0) -> Background:
        """Whole sentences totalling at most `budget` tokens and, where possible, at least
        `budget - tolerance` (the legacy rule).

        Each book is read as a ring from a random sentence: to its end, then from its start
        up to that sentence, so that every sentence of every book can be used in one draw.
        """
        if budget <= 0:
            return Background((), 0, ())
        self._check_budget(budget)
        hs = self.haystack
        unused: list[int] = []
        runs: list[tuple[int, int]] = []
        books: list[str] = []
        total = 0
        added_this_pass = 0
        while budget - total > tolerance:
            if not unused:
                if runs and not self.allow_reuse:
                    break
                if runs and added_this_pass == 0:
                    break  # no sentence of any book fits the remainder
                unused, added_this_pass = list(range(len(hs.book_ids))), 0
            book = unused.pop(int(rng.integers(len(unused))))
            first, stop = int(hs.book_starts[book]), int(hs.book_starts[book + 1])
            start = int(rng.integers(first, stop))
            before = total
            for a, b in ((start, stop), (first, start)):
                if budget - total <= tolerance:
                    break
                taken, total = self._take(a, b, budget, total, tolerance)
                runs.extend(taken)
            if total > before:
                books.append(hs.book_ids[book])
                added_this_pass += total - before
        return Background(tuple(runs), total, tuple(books))

    def _take(
        self, a: int, b: int, budget: int, total: int, tolerance: int
    ) -> tuple[list[tuple[int, int]], int]:
        """Consecutive sentences of [a, b) that fit, then later ones of [a, b) that still fit."""
        offsets = self.haystack.offsets
        runs = []
        limit = offsets[a] + (budget - total)
        end = min(max(int(np.searchsorted(offsets, limit, side="right")) - 1, a), b)
        if end > a:
            runs.append((a, end))
            total += int(offsets[end] - offsets[a])
        pos = end
        while budget - total > tolerance and pos < b:
            window = self._lengths[pos : min(b, pos + 4096)]
            fits = np.flatnonzero(window <= budget - total)
            if fits.size == 0:
                pos += window.size
                continue
            pos += int(fits[0])
            runs.append((pos, pos + 1))
            total += int(self._lengths[pos])
            pos += 1
        return runs, total

