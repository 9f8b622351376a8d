"""Streaming inference equals one scan over the whole input (RMT and RMT-R)."""

import jax
import numpy as np
import pytest
from flax import nnx

from rmt_jax import RMT, answer_logits, get_config, scan_segments, stream_infer
from tests.test_rmt_recurrence import VARIANTS, make_model

# numbers and behaviour, not speed: XLA's optimisations off (conftest.fast_compiles)
pytestmark = pytest.mark.usefixtures("fast_compiles")

SEG = 8


@pytest.mark.parametrize("memory", VARIANTS)
def test_stream_equals_one_shot_scan(memory):
    model = make_model(**VARIANTS[memory])
    tokens = np.random.RandomState(0).randint(1, 64, (7 * SEG + 3,)).astype(np.int32)
    query = np.arange(1, 5, dtype=np.int32)[None]
    one_shot, _ = jax.jit(lambda: scan_segments(model, tokens[None]))()
    segments = one_shot.step

    # from an array (buffer preallocated) and from an iterator of odd pieces (buffer grown)
    pieces = (tokens[i:i + 13] for i in range(0, tokens.size, 13))
    for source in (tokens, pieces):
        streamed = stream_infer(model, source, chunk_segments=3)
        np.testing.assert_allclose(streamed.memory, one_shot.memory, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(answer_logits(model, streamed, query),
                                   answer_logits(model, one_shot, query), rtol=1e-5, atol=1e-5)
        if memory == "armt":  # constant in size: the associations alone
            for a, b in zip(streamed.assoc, one_shot.assoc, strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        if memory == "rmt_r":
            assert streamed.buffer.shape[1] >= 9  # 3 chunks of 3 segment slots
            np.testing.assert_allclose(streamed.buffer[:, :segments], one_shot.buffer,
                                       rtol=1e-5, atol=1e-6)
            assert not bool(streamed.buffer_valid[:, segments:].any())
        else:
            assert streamed.buffer is None  # RMT carries only [B, n, d]

    # continuing a stream from a carried state
    first = stream_infer(model, tokens[: 4 * SEG], chunk_segments=2)
    rest = stream_infer(model, tokens[4 * SEG:], chunk_segments=2, state=first)
    np.testing.assert_allclose(rest.memory, one_shot.memory, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(answer_logits(model, rest, query),
                               answer_logits(model, one_shot, query), rtol=1e-5, atol=1e-5)


def test_rows_of_different_lengths_stream_with_a_mask():
    """A batch whose rows end in padding streams as one masked scan does; bad masks fail."""
    model = RMT(get_config("test"), rngs=nnx.Rngs(0))
    tokens = np.random.RandomState(1).randint(1, 64, (3, 6 * SEG + 5)).astype(np.int32)
    lengths = np.array([6 * SEG + 5, 2 * SEG + 1, 4 * SEG])
    mask = np.arange(tokens.shape[1])[None] < lengths[:, None]
    one_shot, _ = jax.jit(lambda: scan_segments(model, tokens, mask))()
    streamed = stream_infer(model, tokens, mask=mask, chunk_segments=2)
    np.testing.assert_allclose(streamed.memory, one_shot.memory, rtol=1e-5, atol=1e-6)
    # each row as if streamed alone, without its padding
    for row, length in enumerate(lengths):
        alone = stream_infer(model, tokens[row, :length], chunk_segments=2)
        np.testing.assert_allclose(streamed.memory[row], alone.memory[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="mask shape"):
        stream_infer(model, tokens, mask=mask[:, :-1])
    with pytest.raises(ValueError, match="mask is for an array"):
        stream_infer(model, iter([tokens]), mask=mask)
