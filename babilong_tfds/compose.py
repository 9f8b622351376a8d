"""Composing BABILong samples: bAbI facts hidden in background text of a target length.

A length is a name from `tasks.LENGTHS` ("4k") or, for training, an int: the context size
in tokens itself, with no prompt margin and no length/8 filter (facts must only fit).

Contract of one sample of length L tokens (L from `tasks.LENGTHS`):
  * the context (`input`) holds `L - margin` tokens (`margin` = 300 by default) within
    `tolerance(L - margin)` = max(20, 1%) tokens; "0k" is the facts alone;
  * the facts of the bAbI story stand whole and in order, each at a sentence boundary of
    the background, at boundaries drawn uniformly at random (with replacement, then
    sorted), optionally confined to a window [start, end] of the context, or all at one
    depth (the needle-in-a-haystack sweep);
  * token counts are sums of per-sentence counts (sentences joined by single spaces), so
    the context re-tokenized as a whole has the same count up to a token or two;
  * everything random comes from the `numpy.random.Generator` passed in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from babilong_tfds.babi import BabiSample
from babilong_tfds.haystack import Background, Haystack, HaystackSampler
from babilong_tfds.tasks import PROMPT_MARGIN, check_length

# The reference keeps stories whose facts take at most this fraction of the length.
MAX_FACT_FRACTION = 1 / 8
# The needle-depth sweep: 0%, 10%, ..., 100%.
DEPTH_SWEEP = tuple(round(0.1 * i, 1) for i in range(11))


class CompositionError(ValueError):
    """A sample cannot be composed at the length asked (too short for the story)."""


def tolerance(budget: int) -> int:
    """How far below its budget a context may end: 1%, or 20 tokens for short ones."""
    return max(20, budget // 100)


def context_budget(length: str | int, margin: int = PROMPT_MARGIN) -> int:
    """Tokens of context: a named length minus the prompt margin (0 for 0k), or an int."""
    if not isinstance(length, str):
        if int(length) < 0:
            raise ValueError(f"a context length in tokens must be >= 0, got {length}")
        return int(length)
    tokens = check_length(length)
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

    def _pieces(self, haystack: Haystack):
        """Yields ('bg', first, stop) global sentence ranges and ('fact', i) in text order."""
        runs = self.background.runs
        run_i, run_pos = 0, 0  # position inside runs[run_i]
        done = 0  # background sentences emitted so far

        def emit_until(target):
            nonlocal run_i, run_pos, done
            while done < target:
                a, b = runs[run_i]
                take = min(b - a - run_pos, target - done)
                yield ("bg", a + run_pos, a + run_pos + take)
                run_pos += take
                done += take
                if run_pos == b - a:
                    run_i, run_pos = run_i + 1, 0

        total = sum(b - a for a, b in runs)
        for i, boundary in enumerate(self.boundaries):
            yield from emit_until(int(boundary))
            yield ("fact", i)
        yield from emit_until(total)

    def text(self, haystack: Haystack) -> str:
        parts: list[str] = []
        facts = self.sample.facts
        for piece in self._pieces(haystack):
            if piece[0] == "bg":
                parts.extend(haystack.sentences[piece[1] : piece[2]])
            else:
                parts.append(facts[piece[1]])
        return " ".join(parts)

    def token_ids(self, haystack: Haystack) -> np.ndarray:
        arrays = []
        for piece in self._pieces(haystack):
            if piece[0] == "bg":
                lo, hi = haystack.offsets[piece[1]], haystack.offsets[piece[2]]
                arrays.append(haystack.tokens[lo:hi])
            else:
                arrays.append(self.fact_tokens[piece[1]])
        if not arrays:
            return np.zeros(0, np.int32)
        return np.concatenate(arrays).astype(np.int32, copy=False)


class Composer:
    """Hides bAbI facts in haystack text; holds the haystack, tokenizer and settings."""

    def __init__(
        self,
        haystack: Haystack | None,
        tokenizer,
        *,
        margin: int = PROMPT_MARGIN,
        allow_reuse: bool = False,
    ):
        self.haystack = haystack
        self.tokenizer = tokenizer
        self.margin = margin
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

    def fits(self, sample: BabiSample, length: str | int) -> bool:
        """The reference's filter: above 0k, facts may take at most length/8 tokens. For a
        length in tokens (an int), the facts must fit in it."""
        if not isinstance(length, str):
            return int(length) == 0 or self.fact_token_count(sample) <= int(length)
        tokens = check_length(length)
        return tokens == 0 or self.fact_token_count(sample) <= tokens * MAX_FACT_FRACTION

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
        budget = context_budget(length, self.margin)
        if budget == 0:
            background = Background((), 0, ())
        else:
            if self.sampler is None:
                raise CompositionError(f"length {length} needs a haystack; none was given")
            room = budget - fact_total
            if room < 0:
                raise CompositionError(
                    f"length {length} leaves {budget} context tokens, fewer than the "
                    f"{fact_total} tokens of this {sample.task} story's facts: use a longer "
                    "length or a shorter story"
                )
            background = self.sampler.sample(room, rng, tolerance=tolerance(budget))
        boundaries = self._boundaries(background, len(fact_tokens), rng, placement)
        return self._assemble(sample, length, background, boundaries, fact_tokens)

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
        n_bg = sum(b - a for a, b in background.runs)
        if n_bg == 0 or n_facts == 0:
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
    return out
