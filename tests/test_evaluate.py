"""Evaluation: scoring of known outputs, results.json and heatmap, streaming = batched, CLI."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest
from flax import nnx

from babilong_tfds import metric
from babilong_tfds.build import BuildOptions, build
from configs.rmt_babilong import get_config
from rmt_jax import checkpointing, evaluate_lib, input_pipeline
from rmt_jax.core.model import RMT

from .conftest import REPO

# numbers and behaviour, not speed: XLA's optimisations off (conftest.fast_compiles)
pytestmark = pytest.mark.usefixtures("fast_compiles")

# A label of qa1 that no hand-made "wrong" output may equal by chance.
WRONG = {"kitchen": "garden"}


def tiny_config(haystack_dir, babi_root):
    config = get_config("quick,qa1")
    config.unlock()
    config.data.haystack_dir = str(haystack_dir)
    config.data.babi_dir = str(babi_root)
    return config


def tiny_model(config, tokenizer, *, scale: float = 1.0) -> RMT:
    """A random tiny RMT; `scale` > 1 makes its greedy answers depend on the context."""
    model = RMT(input_pipeline.model_config(config, tokenizer.vocab_size), rngs=nnx.Rngs(0))
    if scale != 1.0:
        nnx.update(model, jax.tree.map(lambda x: x * scale, nnx.state(model, nnx.Param)))
    return model


def make_workdir(path, config, tokenizer, *, steps=(3, 7), best: int | None = 3) -> RMT:
    """A training workdir as launch.train leaves it: configs, checkpoints, a best one."""
    model = tiny_model(config, tokenizer)
    checkpointing.write_configs(path, config, model.config)
    params = nnx.state(model)
    ckpt = checkpointing.Checkpointer(path, async_save=False)
    for step in steps:
        ckpt.save(step, params, {"step": jnp.int32(step)}, {"step": step})
    if best is not None:
        ckpt.save_best(best, params, {"step": best})
    ckpt.close()
    return model


@pytest.fixture(scope="module")
def setup(small_haystack_dir, babi_root):
    config = tiny_config(small_haystack_dir, babi_root)
    return config, input_pipeline.make_tokenizer(config), input_pipeline.make_composer(config)


def encode_outputs(texts, tokenizer, width=6):
    """Generated ids as a model would return them: the text, eos, then anything."""
    rows = []
    for text in texts:
        ids = [*tokenizer.encode(text), tokenizer.eos_id] if text else [tokenizer.eos_id]
        rows.append(np.asarray((ids + [7] * width)[:max(width, len(ids))], np.int32))
    return rows


# -- scoring ------------------------------------------------------------------------------
def test_scores_hand_made_outputs(setup, monkeypatch):
    config, tokenizer, composer = setup
    records = list(evaluate_lib.iter_records("qa1", "0k", 8, composer=composer,
                                        babi_root=config.data.babi_dir))
    targets = [r["target"] for r in records]
    other = [WRONG.get(t, "kitchen") for t in targets]
    # right | right in a sentence (label yes, exact no) | wrong | two labels | nothing
    kinds = ["right", "sentence", "wrong", "both", "right", "empty", "sentence", "right"]
    texts = {"right": lambda t, o: t, "sentence": lambda t, o: f"the {t}",
             "wrong": lambda t, o: o, "both": lambda t, o: f"{t} or {o}",
             "empty": lambda t, o: ""}
    outputs = [texts[k](t, o) for k, t, o in zip(kinds, targets, other, strict=True)]
    seen = []

    def fake_predict(model, examples, **kwargs):
        seen.append(len(examples))
        return encode_outputs(outputs, tokenizer)

    monkeypatch.setattr(evaluate_lib, "predict", fake_predict)
    results = evaluate_lib.evaluate_model(None, config, composer, tokenizer, tasks="qa1",
                                          lengths="0k", num_samples=8)
    cell = results["results"]["qa1"]["0k"]
    assert seen == [8]
    assert cell == {"accuracy": 5 / 8, "exact_match": 3 / 8, "count": 8}
    assert [e["output"] for e in results["examples"]["qa1"]["0k"]] == outputs[:3]
    assert [e["correct"] for e in results["examples"]["qa1"]["0k"]] == [True, True, False]


def test_streamed_cells_are_made_and_run_batch_by_batch(setup, monkeypatch):
    """From stream_from on, samples are made, encoded and run one batch at a time, every
    batch with the same number of rows; shorter lengths run all at once."""
    config, tokenizer, composer = setup
    calls = []

    def fake_predict(model, examples, *, batch_size, streaming, **kwargs):
        calls.append((len(examples), batch_size, streaming))
        return [np.zeros(6, np.int32)] * len(examples)

    made = []
    iter_records = evaluate_lib.iter_records

    def counting_records(*args, **kwargs):
        for record in iter_records(*args, **kwargs):
            made.append(len(calls))  # how many batches had run when this sample was made
            yield record

    monkeypatch.setattr(evaluate_lib, "predict", fake_predict)
    monkeypatch.setattr(evaluate_lib, "iter_records", counting_records)
    results = evaluate_lib.evaluate_model(None, config, composer, tokenizer, tasks="qa1",
                                          lengths="0k,1k", num_samples=5, batch_size=2,
                                          stream_from="1k")
    assert calls == [(5, 2, False), (2, 2, True), (2, 2, True), (1, 2, True)]
    assert made == [0] * 5 + [1, 1, 2, 2, 3]  # 1k: each batch made after the last one ran
    assert results["results"]["qa1"]["1k"]["count"] == 5


def test_oracle_and_constant_models_through_batches(setup, monkeypatch):
    """A fake model that answers with the batch's own answer ids scores 1; one that always
    says 'kitchen' scores the share of kitchen targets. 5 samples in batches of 2 also check
    that the padded last batch is dropped and the order is kept."""
    config, tokenizer, composer = setup
    calls = []

    def oracle(model, batch, *, max_new_tokens, stop_id):
        assert stop_id == tokenizer.eos_id  # generation stops at the end of the answer
        calls.append(batch["context"].shape)
        return batch["answer"][:, :max_new_tokens]

    monkeypatch.setattr(evaluate_lib, "answer_batch", oracle)
    results = evaluate_lib.evaluate_model(None, config, composer, tokenizer, tasks="qa1,qa2",
                                          lengths="0k", num_samples=5, batch_size=2)
    for task in ("qa1", "qa2"):
        assert results["results"][task]["0k"] == {"accuracy": 1.0, "exact_match": 1.0,
                                                  "count": 5}
    assert len(calls) == 6 and all(shape[0] == 2 for shape in calls)

    kitchen = np.asarray([*tokenizer.encode("kitchen"), tokenizer.eos_id], np.int32)
    monkeypatch.setattr(evaluate_lib, "answer_batch",
                        lambda model, batch, *, max_new_tokens, stop_id: np.tile(
                            kitchen, (len(batch["context"]), 1)))
    results = evaluate_lib.evaluate_model(None, config, composer, tokenizer, tasks="qa1",
                                          lengths="0k", num_samples=12, batch_size=5)
    records = list(evaluate_lib.iter_records("qa1", "0k", 12, composer=composer,
                                        babi_root=config.data.babi_dir))
    share = np.mean([r["target"] == "kitchen" for r in records])
    assert 0 < share < 1
    assert results["results"]["qa1"]["0k"]["accuracy"] == pytest.approx(share)


def test_tfds_source_reads_the_materialized_split(setup, manual_dir, tmp_path, monkeypatch):
    """A built split gives the records that source='files' makes on the fly (seed 0)."""
    config, tokenizer, composer = setup
    build("qa1", "0k", data_dir=tmp_path, manual_dir=manual_dir,
          options=BuildOptions(num_samples=4))
    from_tfds = list(evaluate_lib.iter_records("qa1", "0k", 3, source="tfds", data_dir=tmp_path,
                                          tfds_name="babilong/{task}_{length}_test4"))
    on_the_fly = list(evaluate_lib.iter_records("qa1", "0k", 3, composer=composer,
                                           babi_root=config.data.babi_dir))
    assert len(from_tfds) == 3
    for a, b in zip(from_tfds, on_the_fly, strict=True):
        assert [evaluate_lib._text(a[k]) for k in ("question", "target")] == [
            b["question"], b["target"]]
        # on the fly, the context comes as the composer's tokens: the same text
        assert tokenizer.decode(b["input_ids"]) == evaluate_lib._text(a["input"])
        assert list(b["input_ids"]) == tokenizer.encode(evaluate_lib._text(a["input"]))
    monkeypatch.setattr(evaluate_lib, "answer_batch",
                        lambda model, batch, *, max_new_tokens, stop_id: batch["answer"])
    results = evaluate_lib.evaluate_model(None, config, None, tokenizer, tasks="qa1",
                                          lengths="0k", num_samples=10, source="tfds",
                                          data_dir=tmp_path,
                                          tfds_name="babilong/{task}_{length}_test4")
    assert results["results"]["qa1"]["0k"]["count"] == 4  # the split holds 4
    assert results["meta"]["tfds_name"] == "babilong/{task}_{length}_test4"


# -- the real model -----------------------------------------------------------------------
def test_real_model_results_and_heatmap(setup, tmp_path):
    config, tokenizer, composer = setup
    model = tiny_model(config, tokenizer)
    results = evaluate_lib.evaluate_model(model, config, composer, tokenizer, tasks="qa1",
                                          lengths="0k,1k", num_samples=3, batch_size=2)
    paths = evaluate_lib.write_results(results, tmp_path / "eval")
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["heatmap.png",
                                                                     "results.json"]
    saved = json.loads(paths["results"].read_text())
    assert set(saved) == {"results", "examples", "meta"}  # no qa1..qa5 mean for qa1 alone
    for length in ("0k", "1k"):
        cell = saved["results"]["qa1"][length]
        assert set(cell) == {"accuracy", "exact_match", "count"} and cell["count"] == 3
        assert 0.0 <= cell["accuracy"] <= 1.0 and 0.0 <= cell["exact_match"] <= 1.0
        examples = saved["examples"]["qa1"][length]
        assert len(examples) == 3
        assert {"question", "target", "output", "correct"} == set(examples[0])
        # the cell's accuracy is the metric applied to what the model said
        assert cell["accuracy"] == np.mean([metric.label_score(e["target"], e["output"],
                                                               e["question"], "qa1")
                                            for e in examples])
    assert saved["meta"]["lengths"] == ["0k", "1k"] and saved["meta"]["source"] == "files"
    image = matplotlib.image.imread(paths["heatmap"])
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


@pytest.mark.parametrize("stream_batch", [4, 3])
def test_streaming_equals_batched(setup, stream_batch):
    """1M and 10M go through stream_infer batch by batch; on a 1k input (several chunks of 4
    segments, the last one partial; rows of different lengths; with 3, a last batch padded
    by repetition) it must answer as the batched scan does."""
    config, tokenizer, composer = setup
    model = tiny_model(config, tokenizer, scale=5.0)
    records = list(evaluate_lib.iter_records("qa1", "1k", 4, composer=composer,
                                        babi_root=config.data.babi_dir))
    examples = evaluate_lib.encode_records(records, tokenizer, config)
    assert len({int(e["context_mask"].sum()) for e in examples}) > 1  # different lengths
    batched = np.stack(evaluate_lib.predict(model, examples, max_new_tokens=6, batch_size=4,
                                            streaming=False))
    streamed = np.stack(evaluate_lib.predict(model, examples, max_new_tokens=6,
                                             batch_size=stream_batch, streaming=True,
                                             chunk_segments=4))
    assert len(set(batched[:, 0].tolist())) > 1  # the answers depend on the context
    # The first tokens: later ones of this chaotic (scaled) model may flip on float noise.
    np.testing.assert_array_equal(streamed[:, :2], batched[:, :2])


# -- summaries ----------------------------------------------------------------------------
def fake_results(lengths=("0k", "4k")):
    tasks = ("qa1", "qa2", "qa3", "qa4", "qa5")
    acc = {t: {n: 0.1 * (i + 1) + 0.05 * j for j, n in enumerate(lengths)}
           for i, t in enumerate(tasks)}
    results = {t: {n: {"accuracy": acc[t][n], "exact_match": acc[t][n] / 2, "count": 10}
                   for n in lengths} for t in tasks}
    return {"results": results,
            "mean_qa1_qa5": metric.leaderboard_means(results, lengths),
            "meta": {"lengths": list(lengths)}}


def test_leaderboard_mean_table_and_grid(tmp_path):
    results = fake_results()
    assert results["mean_qa1_qa5"] == pytest.approx({"0k": 0.3, "4k": 0.35})
    partial = {t: v for t, v in results["results"].items() if t != "qa5"}
    assert metric.leaderboard_means(partial, ["0k"]) == {}
    grid, rows, cols = evaluate_lib.accuracy_grid(results)
    assert rows == ["qa1", "qa2", "qa3", "qa4", "qa5", "qa1-5"] and cols == ["0k", "4k"]
    np.testing.assert_allclose(grid[:, 1], [15, 25, 35, 45, 55, 35])
    table = evaluate_lib.format_table(results)
    assert "qa3" in table and "35 /" in table and table.splitlines()[-1].split() == [
        "qa1-5", "30", "35"]
    paths = evaluate_lib.write_results(results, tmp_path)
    assert json.loads(paths["results"].read_text()) == results
    assert matplotlib.image.imread(paths["heatmap"]).shape[0] > 100


def test_write_results_is_atomic(tmp_path):
    results = fake_results()
    results["meta"]["bad"] = object()  # not JSON-able: the write fails midway
    with pytest.raises(TypeError):
        evaluate_lib.write_results(results, tmp_path)
    assert list(tmp_path.iterdir()) == []


# -- bad input ----------------------------------------------------------------------------
def test_parse_step():
    assert evaluate_lib.parse_step("best") == "best"
    assert evaluate_lib.parse_step("latest") is None
    assert evaluate_lib.parse_step("1200") == 1200
    with pytest.raises(ValueError, match="'best', 'latest' or a step"):
        evaluate_lib.parse_step("newest")


@pytest.mark.parametrize("kwargs, message", [
    ({"tasks": "qa21"}, "unknown task 'qa21': expected one of qa1..qa20"),
    ({"lengths": "3k"}, "unknown length '3k': expected one of 0k, 1k"),
    ({"source": "hf"}, "unknown source 'hf'"),
    ({"num_samples": 0}, "num_samples=0"),
    ({"step": "newest"}, "unknown step"),
    ({"recipe": "published"}, "unknown recipe 'published'"),
])
def test_bad_arguments_write_nothing(tmp_path, kwargs, message):
    (tmp_path / "work").mkdir()
    args = {"tasks": "qa1", "lengths": "0k"} | kwargs
    with pytest.raises(ValueError, match=message):
        evaluate_lib.evaluate_checkpoint(tmp_path / "work", out_dir=tmp_path / "out", **args)
    assert not (tmp_path / "out").exists() and list((tmp_path / "work").iterdir()) == []


def test_missing_workdir_or_checkpoint(setup, tmp_path):
    config, tokenizer, _ = setup
    with pytest.raises(FileNotFoundError, match="launch.train"):
        evaluate_lib.evaluate_checkpoint(tmp_path / "absent", tasks="qa1", lengths="0k")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="launch/train.py"):
        evaluate_lib.evaluate_checkpoint(tmp_path / "empty", tasks="qa1", lengths="0k")
    make_workdir(tmp_path / "nobest", config, tokenizer, best=None)
    with pytest.raises(FileNotFoundError, match="no checkpoint in .*best"):
        evaluate_lib.evaluate_checkpoint(tmp_path / "nobest", tasks="qa1", lengths="0k")
    with pytest.raises(FileNotFoundError, match="no checkpoint at step 5"):
        evaluate_lib.evaluate_checkpoint(tmp_path / "nobest", tasks="qa1", lengths="0k", step=5)
    assert not (tmp_path / "nobest" / "eval").exists()


def test_official_recipe_makes_samples_as_the_published_generator(setup, tmp_path):
    config, tokenizer, _ = setup
    make_workdir(tmp_path / "work", config, tokenizer)
    official = evaluate_lib.official_recipe(config)
    assert official.data.length_table == "official" and official.data.splitter == "punkt"
    assert config.data.length_table == "pow2"  # the training config is left as it was
    composer = input_pipeline.make_composer(official)
    assert composer.length_tokens("1k") == 1000 and composer.recipe.fill == "exact"
    results = evaluate_lib.evaluate_checkpoint(tmp_path / "work", tasks="qa1", lengths="1k",
                                               num_samples=2, batch_size=2,
                                               recipe="official")
    assert results["meta"]["recipe"] == evaluate_lib.OFFICIAL_RECIPE


def test_a_stopped_evaluation_keeps_its_cells_and_the_rerun_continues(setup, tmp_path,
                                                                     monkeypatch):
    """results.json is written after every cell (marked partial); the same evaluation run
    again takes the finished cells over and runs only the rest; another step, --noresume or
    a finished file run everything."""
    config, tokenizer, _ = setup
    make_workdir(tmp_path / "work", config, tokenizer, steps=(3, 7), best=3)
    real_predict, ran = evaluate_lib.predict, []

    def predict(model, examples, **kwargs):
        ran.append(len(ran))
        if stop_at == len(ran):
            raise KeyboardInterrupt  # the process is stopped during this cell
        return real_predict(model, examples, **kwargs)

    monkeypatch.setattr(evaluate_lib, "predict", predict)
    args = {"tasks": "qa1,qa2", "lengths": "0k", "num_samples": 2, "batch_size": 2,
            "step": "latest", "out_dir": tmp_path / "out"}
    stop_at = 2
    with pytest.raises(KeyboardInterrupt):
        evaluate_lib.evaluate_checkpoint(tmp_path / "work", **args)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["meta"]["partial"] is True and saved["meta"]["step"] == 7
    assert list(saved["results"]) == ["qa1"]
    assert (tmp_path / "out" / "heatmap.png").exists()

    stop_at, ran[:] = None, []
    results = evaluate_lib.evaluate_checkpoint(tmp_path / "work", **args)
    assert len(ran) == 1  # qa2 only
    assert results["results"]["qa1"] == saved["results"]["qa1"]
    final = json.loads((tmp_path / "out" / "results.json").read_text())
    assert "partial" not in final["meta"] and set(final["results"]) == {"qa1", "qa2"}

    # a finished file is not continued: every cell runs again
    ran[:] = []
    evaluate_lib.evaluate_checkpoint(tmp_path / "work", **args)
    assert len(ran) == 2
    # a partial file of another checkpoint step, or resume=False: every cell runs
    for kwargs in ({"step": 3}, {"resume": False}):
        stop_at, ran[:] = 2, []
        with pytest.raises(KeyboardInterrupt):
            evaluate_lib.evaluate_checkpoint(tmp_path / "work", **args)
        stop_at, ran[:] = None, []
        evaluate_lib.evaluate_checkpoint(tmp_path / "work", **{**args, **kwargs})
        assert len(ran) == 2, kwargs


# -- the launcher -------------------------------------------------------------------------
def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "launch.evaluate", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_end_to_end_and_bad_input(setup, tmp_path):
    config, tokenizer, _ = setup
    make_workdir(tmp_path / "work", config, tokenizer, steps=(3, 7), best=3)
    out = run_cli(f"--workdir={tmp_path / 'work'}", "--tasks=qa1,qa2", "--lengths=0k",
                  "--num_samples=2", "--step=latest")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "accuracy / exact match" in out.stdout and "step 7" in out.stdout
    saved = json.loads((tmp_path / "work" / "eval" / "results.json").read_text())
    assert saved["meta"]["step"] == 7 and saved["meta"]["step_requested"] == "latest"
    assert set(saved["results"]) == {"qa1", "qa2"}
    assert (tmp_path / "work" / "eval" / "heatmap.png").stat().st_size > 1000

    bad = run_cli(f"--workdir={tmp_path / 'work'}", "--tasks=qa1", "--lengths=5k",
                  f"--out_dir={tmp_path / 'bad'}")
    assert bad.returncode == 1 and "unknown length '5k': expected one of 0k" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_export_checkpoint_bf16_loads_and_answers_alike(setup, tmp_path):
    from launch import export_checkpoint

    config, tokenizer, _ = setup
    model = make_workdir(tmp_path / "run", config, tokenizer, steps=(3, 7), best=None)
    out = export_checkpoint.export(str(tmp_path / "run"), str(tmp_path / "export"),
                                   step=None, param_dtype="bfloat16")
    assert sorted(p.name for p in out.iterdir() if p.name != "checkpoints") == [
        "best", "config.json", "model_config.json"]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    exported, exported_config, step = checkpointing.restore_for_inference(out, "best")
    assert step == 7 and exported_config.model.param_dtype == "bfloat16"
    leaves = jax.tree.leaves(nnx.state(exported, nnx.Param))
    assert leaves and all(x.dtype == jnp.bfloat16 for x in leaves)
    # the tied head gives the same logits up to bf16 rounding of the weights
    ref = model.logits(jnp.ones((2, config.model.d_model)))
    got = exported.logits(jnp.ones((2, config.model.d_model)))
    assert float(jnp.linalg.norm(got - ref) / jnp.linalg.norm(ref)) < 1e-2
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_checkpoint.export(str(tmp_path / "run"), str(out))
    with pytest.raises(ValueError, match="step"):
        export_checkpoint.parse_step("newest")


# -- published samples (--data) and the default TFDS names -------------------------------
@pytest.fixture(scope="module")
def exported(setup, tmp_path_factory):
    """A JSONL export folder of 4 qa1 0k samples (the on-the-fly records, as text)."""
    from babilong_tfds.build import export_jsonl
    from babilong_tfds.dataset import generate_split

    config, _, composer = setup
    out = tmp_path_factory.mktemp("exported")
    records = [r for _, r in generate_split(composer, "qa1", "0k", "test", 4,
                                            babi_root=config.data.babi_dir)]
    export_jsonl(records, out / "qa1" / "0k.jsonl")
    return out


def test_published_source_reads_an_exported_folder(setup, exported, monkeypatch):
    """--data gives the records made on the fly, their text tokenized by the model's tokenizer,
    and the evaluation path as for the other sources."""
    config, tokenizer, composer = setup
    from_data = list(evaluate_lib.iter_records("qa1", "0k", 3, source="published",
                                          data=str(exported)))
    on_the_fly = list(evaluate_lib.iter_records("qa1", "0k", 3, composer=composer,
                                           babi_root=config.data.babi_dir))
    assert len(from_data) == 3
    for a, b in zip(from_data, on_the_fly, strict=True):
        assert (a["question"], a["target"], a["task"]) == (b["question"], b["target"], "qa1")
        encoded = evaluate_lib.encode_records([a], tokenizer, config)[0]
        assert list(encoded["context"][encoded["context_mask"]]) == list(b["input_ids"])
    monkeypatch.setattr(evaluate_lib, "answer_batch",
                        lambda model, batch, *, max_new_tokens, stop_id: batch["answer"])
    results = evaluate_lib.evaluate_model(None, config, None, tokenizer, tasks="qa1",
                                          lengths="0k", num_samples=10, source="published",
                                          data=str(exported))
    assert results["results"]["qa1"]["0k"]["count"] == 4  # the folder holds 4
    assert results["results"]["qa1"]["0k"]["accuracy"] == 1.0  # the oracle's answers
    assert results["meta"]["data"] == str(exported)
    with pytest.raises(ValueError, match=r"lacks qa1 at 1k, qa2 at 0k.*holds qa1 at 0k"):
        evaluate_lib.evaluate_model(None, config, None, tokenizer, tasks="qa1,qa2",
                                    lengths="0k,1k", source="published", data=str(exported))
    with pytest.raises(ValueError, match="needs data"):
        evaluate_lib.check_options("qa1", "0k", source="published", num_samples=1,
                                   batch_size=1)


def test_cli_evaluates_published_samples(setup, exported, tmp_path):
    config, tokenizer, _ = setup
    make_workdir(tmp_path / "work", config, tokenizer, steps=(3,), best=3)
    out = run_cli(f"--workdir={tmp_path / 'work'}", "--tasks=qa1", "--lengths=0k",
                  "--num_samples=2", f"--data={exported}", f"--out_dir={tmp_path / 'eval'}")
    assert out.returncode == 0, out.stderr[-2000:]
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["meta"]["source"] == "published" and saved["meta"]["data"] == str(exported)
    assert saved["results"]["qa1"]["0k"]["count"] == 2
    bad = run_cli(f"--workdir={tmp_path / 'work'}", "--tasks=qa1", "--lengths=1k",
                  f"--data={exported}", f"--out_dir={tmp_path / 'bad'}")
    assert bad.returncode == 1 and "error: " in bad.stderr and "lacks qa1 at 1k" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_default_tfds_name_finds_what_the_build_wrote(manual_dir, tmp_path):
    """launch.build_babilong names a build by its options (qa1_0k_test2); the evaluation's
    default name pattern finds it when it is the only build of the cell."""
    with pytest.raises(ValueError, match="no TFDS dataset babilong/qa1_0k under .*build it"):
        evaluate_lib.resolve_tfds_name(evaluate_lib.DEFAULT_TFDS_NAME, "qa1", "0k", tmp_path)
    (result,) = build("qa1", "0k", data_dir=tmp_path, manual_dir=manual_dir,
                      options=BuildOptions(num_samples=2))
    assert evaluate_lib.resolve_tfds_name(evaluate_lib.DEFAULT_TFDS_NAME, "qa1", "0k",
                                          tmp_path) == f"babilong/{result.config}"
    records = list(evaluate_lib.iter_records("qa1", "0k", 5, source="tfds", data_dir=tmp_path))
    assert [int(r["index"]) for r in records] == [0, 1]
    build("qa1", "0k", data_dir=tmp_path, manual_dir=manual_dir,
          options=BuildOptions(num_samples=2, seed=1))
    with pytest.raises(ValueError, match="several builds of qa1 at 0k"):
        evaluate_lib.resolve_tfds_name(evaluate_lib.DEFAULT_TFDS_NAME, "qa1", "0k", tmp_path)


def test_a_tfrecord_build_is_a_clear_error(tmp_path, monkeypatch):
    """`tfds build --file_format=tfrecord` writes what data_source cannot read by index."""
    import tensorflow_datasets as tfds

    def tfrecord_source(name, **kwargs):
        raise NotImplementedError("Random access data source for file format tfrecord")

    (tmp_path / "babilong" / "qa1_0k").mkdir(parents=True)
    monkeypatch.setattr(tfds, "data_source", tfrecord_source)
    with pytest.raises(ValueError, match="rebuild it in array_record"):
        list(evaluate_lib.iter_records("qa1", "0k", 2, source="tfds", data_dir=tmp_path))


def test_model_override_changes_how_a_saved_model_computes_and_refuses_its_shapes(setup,
                                                                                  tmp_path):
    config, tokenizer, _ = setup
    make_workdir(tmp_path / "work", config, tokenizer, steps=(3,), best=None)
    plain, _, _ = checkpointing.restore_for_inference(tmp_path / "work")
    model, cfg, step = checkpointing.restore_for_inference(
        tmp_path / "work", model_overrides={"attention_impl": "xla", "scan_unroll": 2})
    assert step == 3 and model.config.attention_impl == "xla" and model.config.scan_unroll == 2
    assert cfg.model.scan_unroll == 2
    assert plain.config.attention_impl != "xla" and plain.config.scan_unroll == 1
    a, b = nnx.state(plain, nnx.Param), nnx.state(model, nnx.Param)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                     strict=True))
    with pytest.raises(ValueError, match="'d_model': it sets the parameters' shapes"):
        checkpointing.restore_for_inference(tmp_path / "work", model_overrides={"d_model": 8})
    with pytest.raises(ValueError, match="'atention_chunk': ModelConfig has no such field"):
        checkpointing.restore_for_inference(tmp_path / "work",
                                            model_overrides={"atention_chunk": 8})
    with pytest.raises(ValueError, match="scan_unroll"):  # ModelConfig's own check
        checkpointing.restore_for_inference(tmp_path / "work", model_overrides={"scan_unroll": 0})

    out = run_cli(f"--workdir={tmp_path / 'work'}", "--tasks=qa1", "--lengths=0k",
                  "--num_samples=2", "--step=latest", "--model_override=attention_impl=xla",
                  "--model_override=scan_unroll=2", f"--out_dir={tmp_path / 'ok'}")
    assert out.returncode == 0, out.stderr[-2000:]
    meta = json.loads((tmp_path / "ok" / "results.json").read_text())["meta"]
    assert meta["model_overrides"] == {"attention_impl": "xla", "scan_unroll": 2}
    for flag, message in (("--model_override=mem_tokens=2", "'mem_tokens': it sets the"),
                          ("--model_override=attention_chunk", "is not FIELD=VALUE")):
        bad = run_cli(f"--workdir={tmp_path / 'work'}", "--tasks=qa1", "--lengths=0k",
                      flag, f"--out_dir={tmp_path / 'bad'}")
        assert bad.returncode == 1 and "error: " in bad.stderr and message in bad.stderr, (
            bad.stderr[-2000:])
        assert not (tmp_path / "bad").exists()
