"""notebooks/attention_maps.ipynb runs headless on a tiny checkpoint and draws its figures."""

import base64
import os

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from rmt_jax import attention_maps, evaluate_lib, input_pipeline

from .conftest import REPO
from .test_evaluate import make_workdir, tiny_config, tiny_model

# numbers and behaviour, not speed: XLA's optimisations off (conftest.fast_compiles)
pytestmark = pytest.mark.usefixtures("fast_compiles")

NOTEBOOK = REPO / "notebooks" / "attention_maps.ipynb"


def test_colab_cell_is_guarded():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert "'google.colab' in sys.modules" in first_code.source.replace('"', "'")
    assert "pip" in first_code.source


def test_notebook_runs_on_a_tiny_checkpoint(small_haystack_dir, babi_root, tmp_path,
                                            monkeypatch):
    config = tiny_config(small_haystack_dir, babi_root)
    make_workdir(tmp_path / "work", config, input_pipeline.make_tokenizer(config), best=3)
    figures = tmp_path / "figures"
    monkeypatch.setenv("RMT_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("RMT_TASK", "qa2")  # several facts, spread over the segments
    monkeypatch.setenv("RMT_LENGTH", "1k")
    monkeypatch.setenv("RMT_FIGURE_DIR", str(figures))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the inline backend shows the figures
    monkeypatch.setenv("JAX_PLATFORMS", os.environ.get("JAX_PLATFORMS", "cpu"))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on any failing cell

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert len(images) == 2  # writing and reading
    assert all(base64.b64decode(o["data"]["image/png"])[:4] == b"\x89PNG" for o in images)
    assert sorted(p.name for p in figures.iterdir()) == ["read_attention.png",
                                                         "write_attention.png"]
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)
    assert "step 3" in text and "question:" in text and "fact 0 in segment" in text


def example_question(record, tokenizer, config) -> np.ndarray:
    example = input_pipeline.encode_example(record, tokenizer, config)
    return example["question"][: int(example["question_length"])]


@pytest.mark.parametrize("answer_mode", ["in_context", "separate"])
def test_attention_maps_mark_the_facts_and_match_evaluation(small_haystack_dir, babi_root,
                                                            answer_mode):
    config = tiny_config(small_haystack_dir, babi_root)
    config.model.answer_mode = answer_mode
    tokenizer = input_pipeline.make_tokenizer(config)
    composer = input_pipeline.make_composer(config)
    model = tiny_model(config, tokenizer, scale=5.0)
    wrapped = attention_maps.with_attention_maps(model)
    assert wrapped.config.attention_map_layers == (1,) and model.config.attention_map_layers == ()
    report = attention_maps.run_sample(wrapped, config, composer, tokenizer, task="qa2",
                                       length="1k", index=1)
    record, cfg = report.record, model.config

    # the tokens marked as fact i, gathered over the segments, are fact i
    marked = {}
    for seg in report.segments:
        assert seg.write.shape == (cfg.mem_tokens, cfg.read_tokens + len(seg.tokens))
        assert (seg.write >= 0).all() and (seg.write.sum(-1) <= 1 + 1e-5).all()
        for i, start, stop in seg.fact_spans:
            marked.setdefault(i, []).extend(seg.tokens[start:stop].tolist())
    assert [tokenizer.decode(marked[i]) for i in range(len(record["facts"]))] == list(
        record["facts"])
    assert len({s.index for s in report.segments if s.fact_spans}) > 1

    # the answering segment: rows (question, answer) are softmax rows over [read memory;
    # context tail ('in_context'); question and answer so far]
    answer = report.answer
    assert cfg.answer_mode == answer_mode
    assert (answer.context_tokens > 0) == (answer_mode == "in_context")
    assert answer.weights.shape == (len(answer.tokens) - answer.context_tokens,
                                    cfg.read_tokens + len(answer.tokens))
    question = example_question(record, tokenizer, config)
    np.testing.assert_array_equal(
        answer.tokens[answer.context_tokens:answer.context_tokens + answer.question_length],
        question)
    np.testing.assert_allclose(answer.weights.sum(-1), 1.0, rtol=1e-5)
    assert (answer.memory_share() > 0).all()

    # the notebook's model answers as the evaluation does (same parameters, same sample)
    example = input_pipeline.encode_example(record, tokenizer, config)
    for streaming in (False, True):
        ids = evaluate_lib.predict(model, [example], max_new_tokens=config.data.max_answer_len,
                                   batch_size=1, streaming=streaming, chunk_segments=2)
        assert input_pipeline.decode_answer(ids[0], tokenizer) == report.prediction
    with pytest.raises(ValueError, match="with_attention_maps"):
        attention_maps.run_sample(model, config, composer, tokenizer, task="qa1", length="0k")
