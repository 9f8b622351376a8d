"""Haystack loading, cleaning, splitting, caching and sampling."""

import gzip
import logging

import numpy as np
import pytest

from babilong_tfds import haystack as hs


def test_strips_gutenberg_header_and_footer(haystack_dir):
    for name in ("pg11.txt", "pg135.txt"):  # pg135 has CRLF line endings
        body = hs.strip_gutenberg((haystack_dir / name).read_text(encoding="utf-8"))
        assert "PROJECT GUTENBERG" not in body[:2000].upper()
        assert "PROJECT GUTENBERG" not in body[-2000:].upper()
        assert "\r" not in body and not body.startswith("\ufeff")
        assert len(body) > 100_000


def test_splitter_keeps_abbreviations_and_drops_short_sentences():
    text = (
        "Mr. Smith met Mrs. Jones in the hall.\nThey spoke softly.\n\n"
        "Yes. Dr. Watson\nwrote it all down."
    )
    assert hs.split_sentences(text) == [
        "Mr. Smith met Mrs. Jones in the hall.",
        "They spoke softly.",
        "Dr. Watson wrote it all down.",
    ]
    assert "Yes." in hs.split_sentences(text, min_words=1)
    assert len(hs.split_sentences(text, min_words=5)) == 2


def test_bad_books_are_skipped_with_a_warning(tmp_path, caplog):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes(
        "caf\xe9 au lait, mon ami, tr\xe8s bien.".encode("latin-1")
    )
    (tmp_path / "broken.txt.gz").write_bytes(b"not gzip")
    (tmp_path / "good.txt.gz").write_bytes(gzip.compress(b"The cat sat on the mat all day."))
    with caplog.at_level(logging.WARNING):
        books = hs.load_books_from_dir(tmp_path)
    assert [b.book_id for b in books] == ["good"]
    log = caplog.text
    assert "empty.txt: it is empty" in log and "latin1.txt: not UTF-8" in log
    assert "broken.txt.gz: not a valid gzip" in log


def test_no_usable_book_is_an_error(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(hs.HaystackError, match="no usable book under"):
        hs.load_books_from_dir(tmp_path)
    with pytest.raises(hs.HaystackError, match="does not exist"):
        hs.load_books_from_dir(tmp_path / "missing")


def test_haystack_arrays_are_consistent(small_haystack, sp_tokenizer):
    h = small_haystack
    assert h.book_ids == ["pg11", "pg1342", "pg84"]
    assert h.book_starts[-1] == h.num_sentences == len(h.offsets) - 1
    assert h.tokens.dtype == np.int32 and h.num_tokens == len(h.tokens)
    i = h.num_sentences // 2
    assert list(h.tokens[h.offsets[i] : h.offsets[i + 1]]) == sp_tokenizer.encode(h.sentences[i])


def test_cache_round_trip_and_corrupt_cache(small_haystack_dir, sp_tokenizer, tmp_path, caplog):
    books = hs.load_books_from_dir(small_haystack_dir)[:1]
    first = hs.Haystack.build(books, sp_tokenizer, cache_dir=tmp_path)
    (cached,) = tmp_path.glob("haystack-*.npz")
    again = hs.Haystack.build(books, sp_tokenizer, cache_dir=tmp_path)
    assert again.sentences == first.sentences and np.array_equal(again.tokens, first.tokens)
    cached.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        rebuilt = hs.Haystack.build(books, sp_tokenizer, cache_dir=tmp_path)
    assert "unreadable" in caplog.text and np.array_equal(rebuilt.tokens, first.tokens)


@pytest.mark.parametrize("keep", [0, 0.5, 0.99])
def test_truncated_cache_is_rebuilt_with_a_warning(small_haystack_dir, sp_tokenizer, tmp_path,
                                                   caplog, keep):
    """A cache cut short (a full disk, a killed copy) raised EOFError (empty) or BadZipFile
    from every build; it is rebuilt with a warning into the haystack a fresh build makes, and
    the rewritten cache loads."""
    books = hs.load_books_from_dir(small_haystack_dir)[:1]
    fresh = hs.Haystack.build(books, sp_tokenizer, use_cache=False)
    hs.Haystack.build(books, sp_tokenizer, cache_dir=tmp_path)
    (cached,) = tmp_path.glob("haystack-*.npz")
    data = cached.read_bytes()
    cached.write_bytes(data[: int(len(data) * keep)])
    with caplog.at_level(logging.WARNING):
        rebuilt = hs.Haystack.build(books, sp_tokenizer, cache_dir=tmp_path)
    assert "unreadable" in caplog.text and "rebuilding" in caplog.text
    for h in (rebuilt, hs.Haystack.build(books, sp_tokenizer, cache_dir=tmp_path)):
        assert h.sentences == fresh.sentences and h.book_ids == fresh.book_ids
        for name in hs.Haystack._ARRAYS:
            assert np.array_equal(getattr(h, name), getattr(fresh, name)), name
    assert cached.read_bytes() == data


@pytest.mark.parametrize("budget", [50, 3_000, 200_000])
def test_sampler_meets_budget_within_tolerance(small_haystack, budget):
    sampler = hs.HaystackSampler(small_haystack)
    tol = max(20, budget // 100)
    for seed in range(5):
        bg = sampler.sample(budget, np.random.default_rng(seed), tolerance=tol)
        lengths = small_haystack.sentence_lengths()
        assert bg.num_tokens == sum(int(lengths[a:b].sum()) for a, b in bg.runs)
        assert budget - tol <= bg.num_tokens <= budget


def test_sampler_uses_whole_haystack_once_and_refuses_more(small_haystack):
    total = small_haystack.num_tokens
    sampler = hs.HaystackSampler(small_haystack)
    bg = sampler.sample(total - 1000, np.random.default_rng(0), tolerance=1000)
    used = [i for a, b in bg.runs for i in range(a, b)]
    assert len(set(used)) == len(used)  # nothing twice
    with pytest.raises(hs.HaystackError, match="fewer than the .* allow reuse"):
        sampler.sample(total + 1, np.random.default_rng(0))
    reuse = hs.HaystackSampler(small_haystack, allow_reuse=True)
    bg = reuse.sample(2 * total, np.random.default_rng(0), tolerance=2 * total // 100)
    assert bg.num_tokens >= 2 * total * 0.99


def test_pg19_download_path_uses_the_download_manager(tmp_path):
    listing = tmp_path / "listing.json"
    listing.write_text('{"items": [{"name": "test/2.txt"}, {"name": "test/1.txt"}]}')
    books = {}
    for i in (1, 2):
        books[f"test/{i}.txt"] = tmp_path / f"{i}.txt"
        books[f"test/{i}.txt"].write_text(f"Book {i} starts here. It has two sentences here.")

    class FakeDownloadManager:
        def download(self, what):
            if isinstance(what, str):
                assert "deepmind-gutenberg" in what and "prefix=test/" in what
                return listing
            assert all(url.endswith(name) for name, url in what.items())
            return {name: books[name] for name in what}

    got = hs.load_pg19("test", dl_manager=FakeDownloadManager())
    assert [b.book_id for b in got] == ["1", "2"] and got[0].text.startswith("Book 1")


# -- the official splitter and sampling rule (Punkt, the 10-token rule, exact budgets) --------
BOOK = (
    "It was a dark and stormy night in the old town by the sea.  The wind\n"
    "howled over the moor, and the rain beat hard against the shutters. Yes. Then the old "
    "man rose\nand walked slowly to the window without a single word to anyone there."
)


def test_punkt_keeps_line_breaks_and_skips_sentences_under_ten_tokens(gpt2_tokenizer, tmp_path):
    book = hs.Book("b", BOOK)
    h = hs.Haystack.build([book], gpt2_tokenizer, cache_dir=tmp_path)
    found = [BOOK[a:b] for a, b in hs.punkt_spans(BOOK)]
    assert found[2] == "Yes." and "\n" in found[1]
    counts = [len(gpt2_tokenizer.encode(" " + s)) for s in found]
    assert counts[2] < hs.MIN_SENTENCE_TOKENS <= min(counts[:2] + counts[3:])
    assert h.sentences == [s for s, n in zip(found, counts, strict=True) if n >= 10]
    assert h.sentences[1].startswith("The wind\nhowled")  # the book's own line break
    assert list(h.kept_before) == [0, 1, 2, 2, 3]
    assert [BOOK[a:b] for a, b in zip(h.span_starts, h.span_ends, strict=True)] == found
    # The cache keeps sentences with line breaks intact.
    again = hs.Haystack.build([book], gpt2_tokenizer, cache_dir=tmp_path)
    assert again.sentences == h.sentences and np.array_equal(again.tokens, h.tokens)


class QueuedRng:
    """Stands in for a numpy Generator: `integers(n)` returns the queued values in turn."""

    def __init__(self, values):
        self.values = list(values)

    def integers(self, n):
        value = self.values.pop(0)
        assert 0 <= value < n
        return value


def test_exact_sampler_drops_partial_sentences_and_cuts_the_last(gpt2_tokenizer, tmp_path):
    text = " ".join(f"Sentence number {k} of this book is long enough to be counted." for k in
                    range(40))
    h = hs.Haystack.build([hs.Book("b", text)], gpt2_tokenizer, cache_dir=tmp_path)
    assert h.num_sentences == 40
    n = int(h.sentence_lengths()[0])
    # First draw: an offset inside sentence 35. Sentence 35 (partial) and 39 (the last the
    # window touches, here the book's end) are dropped: 36..38 give 3 * n tokens. Second draw:
    # inside sentence 2, so sentences 3.. follow, the last one cut to the budget.
    budget = 3 * n + 2 * n + 4
    rng = QueuedRng([0, int(h.span_starts[35]) + 5, 0, int(h.span_starts[2]) + 1])
    bg = hs.HaystackSampler(h).sample_exact(budget, rng)
    assert bg.runs == ((36, 39), (3, 6)) and bg.num_tokens == budget
    assert bg.cut == n - 4 and bg.book_ids == ("b", "b")
    # An offset in the gap before a sentence drops that sentence too (Punkt would see it first).
    gap = int(h.span_ends[9])
    bg = hs.HaystackSampler(h).sample_exact(n, QueuedRng([0, gap]))
    assert bg.runs == ((11, 12),) and bg.cut == 0


def test_exact_sampler_meets_the_budget_exactly(gpt2_haystack):
    sampler = hs.HaystackSampler(gpt2_haystack)
    for budget in (1, 700, 50_000):
        for seed in range(3):
            bg = sampler.sample_exact(budget, np.random.default_rng(seed))
            lengths = gpt2_haystack.sentence_lengths()
            full = sum(int(lengths[a:b].sum()) for a, b in bg.runs)
            assert bg.num_tokens == budget == full - bg.cut and 0 <= bg.cut
            assert bg.cut < lengths[bg.runs[-1][1] - 1]
    with pytest.raises(hs.HaystackError, match="allow reuse"):
        sampler.sample_exact(gpt2_haystack.num_tokens + 1, np.random.default_rng(0))


def test_unknown_splitter(small_haystack_dir, sp_tokenizer):
    with pytest.raises(ValueError, match="unknown splitter 'spacy': expected one of punkt"):
        hs.Haystack.build(hs.load_books_from_dir(small_haystack_dir), sp_tokenizer,
                          splitter="spacy")
