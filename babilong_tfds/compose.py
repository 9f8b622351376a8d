"""Composing BABILong samples: bAbI facts hidden in background text of a target length.

A length is a name from `tasks.LENGTHS` ("4k") or, for training, an int: the context size
in tokens itself, with no prompt margin and no story filter (facts must only fit).

How a sample is made is a `Recipe`; its defaults are the official generator's
(booydar/babilong `data/create_tasks.py` with `babilong/babilong_utils.py`), and every
other value is a named legacy option of this project's earlier versions:

  lengths       'official': "1k" = 1,000 tokens | 'pow2': "1k" = 1,024, "1M" = 2**20
  story_filter  'lines': keep a question when its story's fact lines plus the question
                line number at most `(length - margin) // 8` | 'tokens': when the facts'
                tokens are at most length / 8
  fill          'exact': the context holds exactly `length - margin` tokens, facts included,
                the last background sentence cut to the budget (`HaystackSampler.
                sample_exact`) | 'whole_sentences': whole sentences, within
                `tolerance(length - margin)` = max(20, 1%) tokens below the budget

Contract of one sample of named length L (tokens from the recipe's length table):
  * "0k" is the facts alone, joined by single spaces; above it the context (`input`) holds
    `L - margin` tokens (`margin` = 300) as the recipe's fill says. Should a story's facts
    alone exceed the budget (the line filter lets that happen when facts average more than
    8 tokens), the context is the facts alone, longer than the budget, as in the reference;
  * the facts of the bAbI story stand whole and in order, each at a sentence boundary of
    the background, at boundaries drawn uniformly at random (with replacement, then
    sorted; the end of the text is a boundary too), optionally confined to a window
    [start, end] of the context, or all at one depth (the needle-in-a-haystack sweep);
  * token counts are sums of per-sentence counts (each sentence encoded after a space,
    sentences joined by single spaces, the text stripped), so the context re-tokenized as
    a whole has the same count up to a token or so (the cut sentence, decoded, may
    re-encode differently at its end);
  * everything random comes from the `numpy.random.Generator` passed in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from babilong_tfds.babi import BabiSample
from babilong_tfds.haystack import Background, Haystack, HaystackSampler
from babilong_tfds.tasks import LENGTH_TABLES, PROMPT_MARGIN, check_length

# The legacy token filter keeps stories whose facts take at most this fraction of the length.
MAX_FACT_FRACTION = 1 / 8
# The official line filter: at most one fact line (or the question line) per this many tokens.
TOKENS_PER_LINE = 8
# The needle-depth sweep: 0%, 10%, ..., 100%.
DEPTH_SWEEP = tuple(round(0.1 * i, 1) for i in range(11))
STORY_FILTERS = ("lines", "tokens")
FILLS = ("exact", "whole_sentences")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How samples are made once the haystack is split; the defaults are the official ones."""

    lengths: str = "official"  # length table: 'official' (1k = 1,000) | 'pow2' (1k = 1,024)
    story_filter: str = "lines"  # 'lines' (fact lines + question <= budget // 8) | 'tokens'
    fill: str = "exact"  # 'exact' (last sentence cut to the budget) | 'whole_sentences'

    def __post_init__(self):
        for name, value, allowed in (
            ("lengths", self.lengths, tuple(LENGTH_TABLES)),
            ("story_filter", self.story_filter, STORY_FILTERS),
            ("fill", self.fill, FILLS),
        ):
            if value not in allowed:
                raise ValueError(
                    f"unknown {name} {value!r}: expected one of {', '.join(allowed)}"
                )


# The project's recipe before dataset version 2.0.0 (with the 'blingfire' splitter and the
# sentencepiece tokenizer): what the training configs name.
LEGACY_RECIPE = Recipe(lengths="pow2", story_filter="tokens", fill="whole_sentences")


class CompositionError(ValueError):
    """A sample cannot be composed at the length asked (too short for the story)."""


def tolerance(budget: int) -> int:
    """How far below its budget a context may end: 1%, or 20 tokens for short ones."""
    return max(20, budget // 100)


def context_budget(length: str | int, margin: int = PROMPT_MARGIN, table: str = "official") -> int:
    """Tokens of context: a named length (in `table`) minus the prompt margin (0 for 0k), or
    an int itself."""
    if not isinstance(length, str):
        if int(length) < 0:
            raise ValueError(f"a context length in tokens must be >= 0, got {length}")
        return int(length)
    tokens = check_length(length, table)
    return 0 if tokens == 0 else max(tokens - margin, 0)


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where facts go: uniform in a window of the context, or all at one depth."""

    window: tuple[float, float] = (0.0, 1.0)
    depth: float | None = None

    def __post_init__(self):
        start, end = self.window
        if not 0.0 <= start <= end <= 1.0:
            raise ValueError(
                f"fact window {self.window} must satisfy 0 <= start <= end <= 1 (fractions "
                "of the context)"
            )
        if self.depth is not None and not 0.0 <= self.depth <= 1.0:
            raise ValueError(f"fact depth {self.depth} must be a fraction in [0, 1]")


@dataclasses.dataclass(frozen=True)
class Composition:
    """One composed sample: background runs with facts inserted at sentence boundaries.

    `boundaries[i]` is the number of background sentences before fact i (non-decreasing).
    """

    sample: BabiSample
    length: str | int
    background: Background
    boundaries: np.ndarray
    fact_tokens: tuple[np.ndarray, ...]
    fact_offsets: tuple[int, ...]
    num_tokens: int

    def _pieces(self):
        """Yields ('bg', first, stop, last) global sentence ranges and ('fact', i) in text
        order; `last` marks the range that ends the background (where `cut` applies)."""
        runs = self.background.runs
        total = self.background.num_sentences
        run_i, run_pos = 0, 0  # position inside runs[run_i]
        done = 0  # background sentences emitted so far

        def emit_until(target):
            nonlocal run_i, run_pos, done
            while done < target:
                a, b = runs[run_i]
                take = min(b - a - run_pos, target - done)
                done += take
                yield ("bg", a + run_pos, a + run_pos + take, done == total)
                run_pos += take
                if run_pos == b - a:
                    run_i, run_pos = run_i + 1, 0

        for i, boundary in enumerate(self.boundaries):
            yield from emit_until(int(boundary))
            yield ("fact", i)
        yield from emit_until(total)

    def text(self, haystack: Haystack) -> str:
        parts: list[str] = []
        facts = self.sample.facts
        last_text = self.background.last_text
        for piece in self._pieces():
            if piece[0] == "fact":
                parts.append(facts[piece[1]])
            elif piece[3] and last_text is not None:
                parts.extend(haystack.sentences[piece[1] : piece[2] - 1])
                parts.append(last_text)
            else:
                parts.extend(haystack.sentences[piece[1] : piece[2]])
        return " ".join(parts).strip()

    def token_ids(self, haystack: Haystack) -> np.ndarray:
        arrays = []
        cut = self.background.cut
        for piece in self._pieces():
            if piece[0] == "bg":
                lo, hi = haystack.offsets[piece[1]], haystack.offsets[piece[2]]
                arrays.append(haystack.tokens[lo : hi - cut if piece[3] else hi])
            else:
                arrays.append(self.fact_tokens[piece[1]])
        if not arrays:
            return np.zeros(0, np.int32)
        return np.concatenate(arrays).astype(np.int32, copy=False)


class Composer:
    """Hides bAbI facts in haystack text; holds the haystack, tokenizer and `Recipe`."""

    def __init__(
        self,
        haystack: Haystack | None,
        tokenizer,
        *,
        margin: int = PROMPT_MARGIN,
        allow_reuse: bool = False,
        recipe: Recipe = Recipe(),
    ):
        self.haystack = haystack
        self.tokenizer = tokenizer
        self.margin = margin
        self.recipe = recipe
        self.sampler = HaystackSampler(haystack, allow_reuse=allow_reuse) if haystack else None
        self._fact_cache: dict[str, np.ndarray] = {}

    def encode_facts(self, facts: Sequence[str]) -> tuple[np.ndarray, ...]:
        """Token ids of each fact, encoded as sentences of running text (cached)."""
        missing = [f for f in dict.fromkeys(facts) if f not in self._fact_cache]
        if missing:
            for fact, ids in zip(missing, self.tokenizer.encode_sentences(missing), strict=True):
                self._fact_cache[fact] = np.asarray(ids, dtype=np.int32)
        return tuple(self._fact_cache[f] for f in facts)

    def fact_token_count(self, sample: BabiSample) -> int:
        return int(sum(len(t) for t in self.encode_facts(sample.facts)))

    def length_tokens(self, length: str) -> int:
        """A named length in tokens, in the recipe's length table."""
        return check_length(length, self.recipe.lengths)

    def context_budget(self, length: str | int) -> int:
        return context_budget(length, self.margin, self.recipe.lengths)

    def max_story_lines(self, length: str) -> int:
        """The official filter's limit: fact lines plus the question line (above 0k)."""
        return self.context_budget(length) // TOKENS_PER_LINE

    def fits(self, sample: BabiSample, length: str | int, limit: int | None = None) -> bool:
        """The recipe's story filter at a named length (always true at 0k): 'lines', fact
        lines + 1 <= (length - margin) // 8; 'tokens', fact tokens <= length / 8. For a
        length in tokens (an int, for training), the facts must fit in it. With `limit`, the
        facts must also take at most `limit` tokens (a bare 0-token story in a fixed space)."""
        if limit is not None and self.fact_token_count(sample) > limit:
            return False
        if not isinstance(length, str):
            return int(length) == 0 or self.fact_token_count(sample) <= int(length)
        tokens = self.length_tokens(length)
        if tokens == 0:
            return True
        if self.recipe.story_filter == "lines":
            return len(sample.facts) + 1 <= self.max_story_lines(length)
        return self.fact_token_count(sample) <= tokens * MAX_FACT_FRACTION

    def compose(
        self,
        sample: BabiSample,
        length: str | int,
        rng: np.random.Generator,
        placement: Placement = Placement(),
    ) -> Composition:
        """One sample of `length` with the facts of `sample` placed as `placement` says."""
        fact_tokens = self.encode_facts(sample.facts)
        fact_total = int(sum(len(t) for t in fact_tokens))
        budget = self.context_budget(length)
        if budget == 0:
            background = Background((), 0, ())
        else:
            if self.sampler is None:
                raise CompositionError(f"length {length} needs a haystack; none was given")
            room = budget - fact_total
            exact = self.recipe.fill == "exact"
            if room < 0 and not (exact and isinstance(length, str)):
                raise CompositionError(
                    f"length {length} leaves {budget} context tokens, fewer than the "
                    f"{fact_total} tokens of this {sample.task} story's facts: use a longer "
                    "length or a shorter story"
                )
            if exact:
                background = self._with_last_text(self.sampler.sample_exact(room, rng))
            else:
                background = self.sampler.sample(room, rng, tolerance=tolerance(budget))
        boundaries = self._boundaries(background, len(fact_tokens), rng, placement)
        return self._assemble(sample, length, background, boundaries, fact_tokens)

    def _with_last_text(self, background: Background) -> Background:
        """Decodes the cut last sentence (as the reference decodes its tokens)."""
        if not background.cut:
            return background
        hs = self.haystack
        last = background.runs[-1][1] - 1
        ids = hs.tokens[hs.offsets[last] : hs.offsets[last + 1] - background.cut]
        text = self.tokenizer.decode(ids).removeprefix(" ")
        return dataclasses.replace(background, last_text=text)

    def recompose(self, composition: Composition, boundaries: np.ndarray) -> Composition:
        """The same background and facts with the facts at other sentence boundaries."""
        c = composition
        return self._assemble(c.sample, c.length, c.background, boundaries, c.fact_tokens)

    def _assemble(self, sample, length, background, boundaries, fact_tokens) -> Composition:
        lengths = self.haystack.sentence_lengths() if self.haystack is not None else None
        bg_cum = _background_cumsum(background, lengths)
        fact_lens = np.fromiter((len(t) for t in fact_tokens), np.int64, len(fact_tokens))
        before = np.concatenate([[0], np.cumsum(fact_lens)[:-1]]) if len(fact_lens) else fact_lens
        offsets = tuple(int(bg_cum[b] + f) for b, f in zip(boundaries, before, strict=True))
        return Composition(
            sample=sample,
            length=length,
            background=background,
            boundaries=np.asarray(boundaries, np.int64),
            fact_tokens=fact_tokens,
            fact_offsets=offsets,
            num_tokens=background.num_tokens + int(fact_lens.sum()),
        )

    def _boundaries(
        self, background: Background, n_facts: int, rng: np.random.Generator, placement: Placement
    ) -> np.ndarray:
        if background.num_sentences == 0 or n_facts == 0:
            return np.zeros(n_facts, np.int64)
        cum = _background_cumsum(background, self.haystack.sentence_lengths())
        total = cum[-1]
        if placement.depth is not None:
            k = int(np.argmin(np.abs(cum - placement.depth * total)))
            return np.full(n_facts, k, np.int64)
        start, end = placement.window
        allowed = np.flatnonzero((cum >= start * total) & (cum <= end * total))
        if allowed.size == 0:
            allowed = np.array([int(np.argmin(np.abs(cum - 0.5 * (start + end) * total)))])
        return np.sort(rng.choice(allowed, size=n_facts, replace=True)).astype(np.int64)


def _background_cumsum(background: Background, lengths: np.ndarray | None) -> np.ndarray:
    """[n_bg + 1] tokens of background before each sentence boundary."""
    if not background.runs:
        return np.zeros(1, np.int64)
    per = np.concatenate([lengths[a:b] for a, b in background.runs])
    out = np.zeros(len(per) + 1, np.int64)
    np.cumsum(per, out=out[1:])
    out[-1] -= background.cut
    return out
