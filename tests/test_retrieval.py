"""BM25 retrieval: the facts come back from long book text, in their order, deterministically."""

import numpy as np
import pytest

from babilong_tfds import retrieval

FILLER = [f"The weather on day {i} was mild and the road was quiet." for i in range(40)]


def _context(facts_at: dict[int, str]) -> str:
    sentences = list(FILLER)
    for position in sorted(facts_at, reverse=True):
        sentences.insert(position, facts_at[position])
    return " ".join(sentences)


def test_the_facts_are_kept_in_their_original_order():
    context = _context({3: "Sandra moved to the office.", 30: "Sandra went to the garden.",
                        12: "Daniel took the apple there."})
    kept = retrieval.retrieve_context(context, "Where is Sandra?", top_k=2)
    assert kept == "Sandra moved to the office. Sandra went to the garden."
    kept = retrieval.retrieve_context(context, "Where is the apple?", top_k=1)
    assert kept == "Daniel took the apple there."


def test_facts_are_found_in_a_real_book(haystack_dir):
    text = (haystack_dir / "pg1342.txt").read_text(encoding="utf-8")[20_000:60_000]
    sentences = retrieval.split_sentences(text)
    assert len(sentences) > 100
    facts = ["Zorblax journeyed to the hallway.", "Zorblax travelled to the bathroom."]
    sentences.insert(len(sentences) // 3, facts[0])
    sentences.insert(2 * len(sentences) // 3, facts[1])
    kept = retrieval.retrieve_context(" ".join(sentences), "Where is Zorblax?", top_k=5)
    split = retrieval.split_sentences(kept)
    assert len(split) == 5
    assert [s for s in split if s in facts] == facts  # both, in order


def test_ties_and_empty_queries_keep_the_earlier_sentences():
    sentences = ["b a.", "c d.", "a b.", "e f."]
    scores = np.array([1.0, 0.0, 1.0, 1.0], np.float32)
    assert retrieval.top_sentences(sentences, scores, 2) == ["b a.", "a b."]
    context = "One thing. Two things. Three things."
    # Only stop words (or words absent from the context): the first k sentences.
    assert retrieval.retrieve_context(context, "Where is it?", top_k=2) == (
        "One thing. Two things.")
    assert retrieval.retrieve_context(context, "Where is Zed?", top_k=9) == context
    assert retrieval.retrieve_context("", "Where is Zed?", top_k=3) == ""


def test_same_input_same_context():
    context = _context({5: "Mary got the milk there.", 25: "Mary dropped the milk."})
    first = retrieval.retrieve_context(context, "What is Mary carrying?", top_k=3)
    assert first == retrieval.retrieve_context(context, "What is Mary carrying?", top_k=3)
    assert "Mary got the milk there." in first and "Mary dropped the milk." in first


def test_none_passes_the_context_through_and_names():
    assert retrieval.retrieve_context(" a. b ", "q", method="none") == " a. b "
    assert retrieval.run_suffix("none", 5) == ""
    assert retrieval.run_suffix("bm25", 3) == "retrieval_bm25_top_3"


@pytest.mark.parametrize("method, top_k, message", [
    ("dense", 5, "unknown retrieval 'dense'"),
    ("bm25", 0, "top_k=0"),
])
def test_bad_options(method, top_k, message):
    with pytest.raises(ValueError, match=message):
        retrieval.retrieve_context("a.", "q", method=method, top_k=top_k)
