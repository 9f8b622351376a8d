"""Composing samples: facts whole and in order, lengths within tolerance, placement."""

import numpy as np
import pytest

from babilong_tfds import babi_solver
from babilong_tfds.babi import load_babi
from babilong_tfds.compose import (
    Composer,
    CompositionError,
    Placement,
    context_budget,
    tolerance,
)
from babilong_tfds.dataset import compose_sample


@pytest.fixture(scope="module")
def composer(small_haystack, sp_tokenizer):
    return Composer(small_haystack, sp_tokenizer)


@pytest.fixture(scope="module")
def qa2(babi_root):
    return load_babi("qa2", "test", babi_root)[:40]


def fact_positions(text, facts):
    """Character positions of each fact, searched in order; fails if one is missing."""
    pos, found = 0, []
    for fact in facts:
        pos = text.index(fact, pos)
        found.append(pos)
        pos += len(fact)
    return found


@pytest.mark.parametrize("length", ["0k", "1k", "4k", "32k"])
def test_facts_whole_in_order_and_answer_follows(composer, qa2, sp_tokenizer, length):
    hs = composer.haystack
    for i, sample in enumerate(qa2[:10]):
        c = composer.compose(sample, length, np.random.default_rng(i))
        text = c.text(hs)
        fact_positions(text, sample.facts)
        # The answer follows from the facts as they stand in the text.
        in_text = [f for f in sample.facts if f in text]
        assert babi_solver.solve(sample.task, in_text, sample.question) == sample.answer
        ids = c.token_ids(hs)
        for offset, fact in zip(c.fact_offsets, c.fact_tokens, strict=True):
            assert np.array_equal(ids[offset : offset + len(fact)], fact)
        budget = context_budget(length)
        if length == "0k":
            assert text == " ".join(sample.facts)
        else:
            assert budget - tolerance(budget) <= c.num_tokens <= budget
        # Counting per sentence agrees with tokenizing the whole context.
        assert abs(len(sp_tokenizer.encode(text)) - c.num_tokens) <= 2
        assert len(ids) == c.num_tokens


def test_window_confines_facts(composer, qa2):
    for i, sample in enumerate(qa2[:10]):
        c = composer.compose(sample, "8k", np.random.default_rng(i), Placement(window=(0.4, 0.6)))
        rel = np.asarray(c.fact_offsets) / c.num_tokens
        # Facts sit at boundaries inside the window; the facts themselves push later ones on.
        fact_tokens = sum(len(t) for t in c.fact_tokens) / c.num_tokens
        assert rel.min() >= 0.39 and rel.max() <= 0.61 + fact_tokens


@pytest.mark.parametrize("depth", [0.0, 0.3, 1.0])
def test_needle_depth_puts_the_supporting_fact_there(composer, babi_root, depth):
    qa1 = load_babi("qa1", "test", babi_root)[:10]
    for i, sample in enumerate(qa1):
        c = compose_sample(composer, sample, "16k", np.random.default_rng(i), depth=depth)
        (needle,) = sample.supporting
        rel = c.fact_offsets[needle] / c.num_tokens
        assert abs(rel - depth) < 0.02, (rel, depth)
        assert list(c.fact_offsets) == sorted(c.fact_offsets)


def test_too_short_length_and_missing_haystack(composer, sp_tokenizer, babi_root):
    long_story = max(load_babi("qa3", "test", babi_root), key=lambda s: len(s.facts))
    with pytest.raises(CompositionError, match="fewer than the .* tokens of this qa3 story"):
        composer.compose(long_story, "1k", np.random.default_rng(0))
    with pytest.raises(CompositionError, match="needs a haystack"):
        Composer(None, sp_tokenizer).compose(long_story, "1k", np.random.default_rng(0))


def test_bad_placement():
    with pytest.raises(ValueError, match="0 <= start <= end <= 1"):
        Placement(window=(0.7, 0.2))
    with pytest.raises(ValueError, match="fraction in"):
        Placement(depth=1.5)


def test_same_rng_same_sample_other_rng_differs(composer, qa2):
    hs = composer.haystack
    a = composer.compose(qa2[0], "4k", np.random.default_rng(7)).text(hs)
    b = composer.compose(qa2[0], "4k", np.random.default_rng(7)).text(hs)
    c = composer.compose(qa2[0], "4k", np.random.default_rng(8)).text(hs)
    assert a == b and a != c
