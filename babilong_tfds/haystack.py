"""The haystack: book text split into sentences, tokenized once, sampled by token budget.

Sources of books:
  * a folder of `.txt` / `.txt.gz` files (`load_books_from_dir`), e.g. `../shared/data/haystack`;
  * PG19's test split (`load_pg19`): from a prepared TFDS `pg19` dataset, or downloaded
    book by book through a TFDS download manager (the reference uses this split).

Project Gutenberg headers and licence footers are stripped, paragraphs are unwrapped and
split into sentences with Blingfire's sentence breaker (abbreviations such as "Mr." do not
end a sentence), and sentences under `MIN_WORDS` words are dropped.

`Haystack` keeps every sentence's text and its tokens in flat arrays, so that sampling a
budget of N tokens is a few binary searches and array slices, whatever N is. Tokenizing the
books is the slow part (tens of seconds for 30 MB); `Haystack.build` caches the result on
disk keyed by the books' bytes, the tokenizer and the splitter settings.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from absl import logging

# Sentences with fewer words than this (chapter titles, "Yes.", page furniture) are dropped.
MIN_WORDS = 3
# Bump when splitting or cleaning changes, so that caches are rebuilt.
SPLITTER_VERSION = "blingfire-2"

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


def split_sentences(text: str, min_words: int = MIN_WORDS) -> list[str]:
    """Unwraps paragraphs, splits them into sentences, drops the very short ones."""
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


def _fingerprint(books: Sequence[Book], tokenizer, min_words: int) -> str:
    h = hashlib.sha256()
    h.update(f"{SPLITTER_VERSION}|{min_words}|{tokenizer.fingerprint}".encode())
    for book in books:
        h.update(book.book_id.encode() + b"\0")
        h.update(hashlib.sha256(book.text.encode("utf-8")).digest())
    return h.hexdigest()[:24]


def default_cache_dir() -> Path:
    return Path(os.environ.get("BABILONG_CACHE", Path.home() / ".cache" / "babilong_tfds"))


@dataclasses.dataclass
class Haystack:
    """All sentences of a set of books, with their tokens, in flat arrays.

    Attributes:
      book_ids: [n_books] the id of each book.
      book_starts: [n_books + 1] the first sentence of each book (and the total count).
      sentences: [n_sentences] the sentence texts.
      offsets: [n_sentences + 1] int64: sentence i has tokens[offsets[i]:offsets[i + 1]].
      tokens: [n_tokens] int32 token ids of every sentence, back to back.
      tokenizer_name: which tokenizer produced `tokens`.
    """

    book_ids: list[str]
    book_starts: np.ndarray
    sentences: list[str]
    offsets: np.ndarray
    tokens: np.ndarray
    tokenizer_name: str = ""

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
        min_words: int = MIN_WORDS,
        cache_dir: str | os.PathLike | None = None,
        use_cache: bool = True,
    ) -> Haystack:
        """Splits and tokenizes `books` (or loads the cached result of doing so)."""
        if not books:
            raise HaystackError("no book given to build a haystack from")
        key = _fingerprint(books, tokenizer, min_words)
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        path = cache / f"haystack-{key}.npz"
        if use_cache and path.exists():
            try:
                return cls._load(path)
            except (OSError, ValueError, KeyError) as e:
                logging.warning("haystack cache %s is unreadable (%s); rebuilding", path, e)
        book_ids, book_starts, sentences = [], [0], []
        for book in books:
            sents = split_sentences(book.text, min_words)
            if not sents:
                logging.warning(
                    "skipping book %s: no sentence of %d+ words", book.book_id, min_words
                )
                continue
            book_ids.append(book.book_id)
            sentences.extend(sents)
            book_starts.append(len(sentences))
        if not sentences:
            raise HaystackError("the books hold no usable sentence")
        encoded = tokenizer.encode_sentences(sentences)
        lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
        offsets = np.zeros(len(sentences) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = np.concatenate(encoded).astype(np.int32) if encoded else np.zeros(0, np.int32)
        haystack = cls(
            book_ids=book_ids,
            book_starts=np.asarray(book_starts, dtype=np.int64),
            sentences=sentences,
            offsets=offsets,
            tokens=tokens,
            tokenizer_name=tokenizer.name,
        )
        if use_cache:
            haystack._save(path)
        return haystack

    def _save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
        os.close(fd)
        try:
            np.savez(
                tmp,
                book_ids=np.asarray(self.book_ids, dtype=object).astype(str),
                book_starts=self.book_starts,
                sentences=np.frombuffer("\n".join(self.sentences).encode("utf-8"), np.uint8),
                offsets=self.offsets,
                tokens=self.tokens,
                tokenizer_name=np.asarray(self.tokenizer_name),
            )
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    @classmethod
    def _load(cls, path: Path) -> Haystack:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            sentences = z["sentences"].tobytes().decode("utf-8").split("\n")
            haystack = cls(
                book_ids=[str(b) for b in z["book_ids"]],
                book_starts=z["book_starts"],
                sentences=sentences,
                offsets=z["offsets"],
                tokens=z["tokens"],
                tokenizer_name=str(z["tokenizer_name"]),
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
    """

    runs: tuple[tuple[int, int], ...]
    num_tokens: int
    book_ids: tuple[str, ...]

    def sentence_indices(self) -> np.ndarray:
        if not self.runs:
            return np.zeros(0, np.int64)
        return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in self.runs])


class HaystackSampler:
    """Draws background text of a given token budget from a `Haystack`.

    A draw picks a random book and a random sentence in it, takes consecutive sentences up
    to the budget, and moves to another random book when the book ends. A book is used once
    per draw unless `allow_reuse`; a haystack smaller than the budget is an error unless
    `allow_reuse`. When the next sentence would overshoot, later sentences of the same book
    that still fit are taken, so that the draw ends within `tolerance` tokens of the budget.
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

    def sample(self, budget: int, rng: np.random.Generator, tolerance: int = 0) -> Background:
        """Sentences totalling at most `budget` tokens and, where possible, at least
        `budget - tolerance`.

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


def iter_sentence_texts(haystack: Haystack, runs: Iterable[tuple[int, int]]) -> Iterable[str]:
    for a, b in runs:
        yield from haystack.sentences[a:b]
