"""The training loop on a shrunken config with synthetic batches: sharding, NaN, metrics."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import rmt_babilong
from rmt_jax import checkpointing, metric_writer, scoring, sharding, train_lib, train_state
from rmt_jax.curriculum import AheadOfTime
from rmt_jax.synthetic_data import SyntheticData

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("fast_compiles")


def tiny_config(overrides: dict | None = None):
    config = rmt_babilong.get_config("smoke,synthetic")
    for dotted, value in (overrides or {}).items():
        node = config
        *parents, name = dotted.split(".")
        for p in parents:
            node = node[p]
        setattr(node, name, value)
    return config


def read_metrics(workdir: Path) -> list[dict]:
    text = (Path(workdir) / metric_writer.METRICS_FILE).read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_partition_specs_split_heads_mlp_and_vocab():
    from jax.sharding import PartitionSpec as P
    from jax.tree_util import DictKey

    def spec(names, shape, model=2):
        return sharding.partition_spec([DictKey(n) for n in names], shape, model)

    assert spec(["blocks", 0, "attn", "qkv"], (32, 3, 2, 16)) == P(None, None, "model", None)
    assert spec(["blocks", 0, "attn", "out"], (2, 16, 32)) == P("model", None, None)
    assert spec(["blocks", 0, "mlp", "fc"], (32, 128)) == P(None, "model")
    assert spec(["blocks", 0, "mlp", "proj"], (128, 32)) == P("model", None)
    assert spec(["wte"], (64, 32)) == P("model", None)
    assert spec(["wte"], (63, 32)) == P()  # not divisible: replicated
    assert spec(["blocks", 0, "ln1", "scale"], (32,)) == P()
    assert spec(["memory"], (2, 32)) == P()
    assert spec(["blocks", 0, "mlp", "fc"], (32, 128), model=1) == P()


def test_weight_decay_skips_biases_layernorms_and_memory():
    config = tiny_config()
    model_config = train_lib.input_pipeline.model_config(config, 64)
    params = jax.eval_shape(
        lambda: train_state.create_train_state(model_config, train_state.make_optimizer(
            config, train_state.make_schedule(config)), 0))["params"]
    mask = {"/".join(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(train_state.decay_mask(params))}
    decayed = {k for k, v in mask.items() if v}
    assert any("qkv" in k for k in decayed) and any("wte" in k for k in decayed)
    assert not any("bias" in k or "ln" in k or "memory" in k for k in decayed)


def test_schedule_warms_up_then_decays():
    config = tiny_config({"optim.warmup_steps": 10, "train.num_steps": 100})
    for name in ("cosine", "linear", "constant"):
        config.optim.schedule = name
        lr = train_state.make_schedule(config)
        peak = config.optim.learning_rate
        assert float(lr(0)) == 0.0 and float(lr(10)) == pytest.approx(peak)
        end = peak if name == "constant" else peak * config.optim.end_lr_fraction
        assert float(lr(100)) == pytest.approx(end, rel=1e-4)
    config.optim.schedule = "cosin"
    with pytest.raises(ValueError, match="cosin"):
        train_state.make_schedule(config)


def test_cooldown_falls_linearly_to_zero_over_the_last_updates():
    config = tiny_config({"optim.warmup_steps": 10, "train.num_steps": 100,
                          "optim.schedule": "constant", "optim.cooldown_steps": 40})
    lr, peak = train_state.make_schedule(config), config.optim.learning_rate
    assert float(lr(10)) == pytest.approx(peak) and float(lr(60)) == pytest.approx(peak)
    assert float(lr(80)) == pytest.approx(peak / 2) and float(lr(100)) == pytest.approx(0.0)
    config.optim.schedule = "cosine"  # on top of a decaying schedule: the product
    assert float(train_state.make_schedule(config)(80)) == pytest.approx(
        float(lr(80)) / peak * float(train_state.make_schedule(
            tiny_config({"optim.warmup_steps": 10, "train.num_steps": 100}))(80)))


@pytest.mark.parametrize("value", [-1, 101])
def test_cooldown_steps_outside_the_run_are_an_error(tmp_path, value):
    config = tiny_config({"train.num_steps": 100, "optim.cooldown_steps": value})
    with pytest.raises(ValueError, match=r"optim.cooldown_steps=.*from 0 to train.num_steps="
                                         r"100: set --config.optim.cooldown_steps"):
        train_lib.train_and_evaluate(config, tmp_path / "w")
    assert not (tmp_path / "w" / "config.json").exists()


def test_exact_match_needs_every_target_token_up_to_eos():
    answer = np.array([[5, 1, 0], [7, 8, 1]])
    predicted = np.array([[5, 1, 9], [7, 9, 1]])
    np.testing.assert_array_equal(scoring.exact_match_tokens(predicted, answer), [True, False])


def test_synthetic_batches_resume_byte_identical():
    config = tiny_config()
    data = SyntheticData(config)
    it = data.iterator(1)
    next(it)
    state = it.get_state()
    a = next(it)
    b = next(data.iterator(1, state))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # stage 1: two segments of 8 in all, the 4 question and 2 answer slots ending the second
    assert config.model.segment_len == 8 and config.model.answer_mode == "in_context"
    assert a["context"].shape == (8, 2 * 8 - 6) and a["query"].shape == (8, 6)
    assert set(a["context_mask"].sum(1).tolist()) <= {8 - 6, 2 * 8 - 6}


def test_train_and_evaluate_learns_and_writes_metrics(tmp_path):
    config = tiny_config({"train.num_steps": 30, "curriculum.segments": (1, 2),
                          "eval.every": 15, "train.log_every": 10})
    out = train_lib.train_and_evaluate(config, tmp_path)
    assert out["step"] == 30
    rows = [r for r in read_metrics(tmp_path) if "train/loss" in r]
    assert [r["step"] for r in rows] == [10, 20, 30]
    assert rows[-1]["train/loss"] < rows[0]["train/loss"]
    for key in ("accuracy", "exact_match", "steps_per_s", "tokens_per_s", "stage",
                "learning_rate", "grad_norm"):
        assert f"train/{key}" in rows[-1]
    assert rows[-1]["train/stage"] == 1
    assert any("eval/exact_match" in r for r in read_metrics(tmp_path))
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((tmp_path / "config.json").read_text())["train"]["num_steps"] == 30
    model, loaded, step = checkpointing.restore_for_inference(tmp_path)
    assert step == 30 and loaded.model.d_model == 32
    _, _, best_step = checkpointing.restore_for_inference(tmp_path, step="best")
    assert best_step in (15, 30)


class CountingJit:
    """A jitted function that counts its lowerings (one per compile)."""

    def __init__(self, fn):
        self.jitted, self.lowered = jax.jit(fn), []

    def lower(self, *args):
        self.lowered.append(args[1]["x"].shape)
        return self.jitted.lower(*args)


def test_ahead_of_time_compiles_in_the_background_and_matches_jit():
    fn = lambda w, batch: (batch["x"] * w).sum(-1)  # noqa: E731
    counting = CountingJit(fn)
    aot = AheadOfTime(counting)
    w = jnp.float32(2.0)
    x = {"x": jnp.arange(12.0).reshape(3, 4)}
    aot.prepare(w, {"x": jax.ShapeDtypeStruct((3, 4), jnp.float32)})
    aot.pending[aot.key(x)].wait()  # compiled before it is needed
    assert counting.lowered == [(3, 4)] and aot.key(x) in aot.ready
    np.testing.assert_array_equal(aot(w, x), jax.jit(fn)(w, x))
    assert counting.lowered == [(3, 4)]  # the call took the prepared program
    y = {"x": jnp.ones((3, 5))}
    np.testing.assert_array_equal(aot(w, y), fn(w, y))  # a new shape compiles at the call
    assert counting.lowered == [(3, 4), (3, 5)]
    aot.prepare(w, {"x": jax.ShapeDtypeStruct((3, 5), jnp.float32)})  # ready: nothing to do
    assert counting.lowered == [(3, 4), (3, 5)] and not aot.pending
    # several shapes: compiled one after the other in one thread, each call waiting for its
    # own shape only
    shapes = [(3, 6), (3, 7), (3, 8)]
    aot.prepare(w, *({"x": jax.ShapeDtypeStruct(s, jnp.float32)} for s in shapes))
    assert len(aot.threads) == 2 and all(aot.key({"x": jnp.ones(s)}) in aot.pending
                                         for s in shapes)
    for s in shapes:
        np.testing.assert_array_equal(aot(w, {"x": jnp.ones(s)}), fn(w, {"x": jnp.ones(s)}))
    aot.wait()
    assert counting.lowered == [(3, 4), (3, 5), *shapes]  # none compiled twice


def test_ahead_of_time_falls_back_when_the_background_compile_fails():
    aot = AheadOfTime(jax.jit(lambda w, batch: batch["x"] @ w))
    w = jnp.ones((4, 2))
    bad = {"x": jax.ShapeDtypeStruct((3, 5), jnp.float32)}  # 5 != 4: does not lower
    aot.prepare(w, bad)
    aot.pending[aot.key(bad)].wait()
    assert aot.key(bad) not in aot.ready
    with pytest.raises(TypeError):  # the call compiles again and raises as jit would
        aot(w, {"x": jnp.ones((3, 5))})
    np.testing.assert_array_equal(aot(w, {"x": jnp.ones((3, 4))}), jnp.full((3, 2), 4.0))


def test_each_stage_is_compiled_before_it_starts(tmp_path, monkeypatch):
    prepared, compiled_at_call = [], []

    class Recording(AheadOfTime):
        def prepare(self, first, *batches, rest=()):
            prepared.extend(b["context"].shape for b in batches)
            super().prepare(first, *batches, rest=rest)

        def __call__(self, first, batch, *rest):
            key = self.key(batch)
            if key not in self.ready and key not in self.pending:
                compiled_at_call.append(batch["context"].shape)
            return super().__call__(first, batch, *rest)

    monkeypatch.setattr(train_lib, "AheadOfTime", Recording)
    config = tiny_config({"train.num_steps": 12, "curriculum.segments": (1, 2, 3),
                          "curriculum.stage_steps": 4, "train.log_every": 2,
                          "train.answer_rows": 2})
    train_lib.train_and_evaluate(config, tmp_path)
    seg, rows = config.model.segment_len, config.train.batch_size
    ctx = seg - config.data.max_question_len - config.data.max_answer_len  # in the last one
    # train step and answer function: stage 0 compiled at its first call, stages 1 and 2
    # prepared while the stage before them trained
    assert compiled_at_call == [(rows, ctx)] * 2
    assert prepared == [(rows, seg + ctx)] * 2 + [(rows, 2 * seg + ctx)] * 2
    # same_length_batches: every width of the next stage for the train step, the longest
    # first (the answer function: the longest alone)
    prepared.clear()
    config.curriculum.same_length_batches = True
    config.curriculum.segments, config.train.num_steps = (1, 3), 5
    train_lib.train_and_evaluate(config, tmp_path / "same_length")
    assert prepared == [(rows, 2 * seg + ctx), (rows, seg + ctx), (rows, ctx),
                        (rows, 2 * seg + ctx)]


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    make = train_state.make_train_step

    def make_nan_at_step_5(graphdef, tx, microbatches):
        step_fn = make(graphdef, tx, microbatches)

        def poisoned(state, batch, lr_scale=None):
            new_state, metrics = step_fn(state, batch, lr_scale)
            bad = state["step"] + 1 == 5
            metrics["loss"] = jnp.where(bad, jnp.nan, metrics["loss"])
            new_state["params"] = jax.tree.map(lambda x: jnp.where(bad, jnp.nan, x),
                                               new_state["params"])
            return new_state, metrics

        return poisoned

    monkeypatch.setattr(train_lib, "make_train_step", make_nan_at_step_5)
    config = tiny_config({"train.num_steps": 10, "train.checkpoint_every": 2,
                          "eval.every": 0, "train.answer_rows": 0})
    with pytest.raises(FloatingPointError, match="at step 5.*last good checkpoint is step 4"):
        train_lib.train_and_evaluate(config, tmp_path)
    ckpt = checkpointing.Checkpointer(tmp_path)
    assert ckpt.latest.all_steps() == [2, 4]
    ckpt.close()
    model, _, step = checkpointing.restore_for_inference(tmp_path)
    assert step == 4
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.tree.map(np.asarray,
                                                                          model.wte[...])))


SHARDED_LOSSES = textwrap.dedent("""
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax
    from tests.test_train_lib import read_metrics, tiny_config
    from rmt_jax import train_lib
    assert len(jax.devices()) == 8, jax.devices()
    out = {}
    for data, model, micro in ((1, 1, 1), (8, 1, 1), (4, 2, 1), (4, 1, 2)):
        name = f"{data}x{model}" + (f"/{micro}" if micro > 1 else "")
        workdir = os.path.join(sys.argv[1], name.replace("/", "_"))
        config = tiny_config({"mesh.data": data, "mesh.model": model, "train.num_steps": 4,
                              "train.log_every": 1, "train.checkpoint_every": 100,
                              "curriculum.segments": (2,), "eval.every": 0,
                              "train.answer_rows": 0, "train.async_checkpoint": False,
                              "train.microbatches": micro})
        train_lib.train_and_evaluate(config, workdir)
        out[name] = [r["train/loss"] for r in read_metrics(workdir)]
    print(json.dumps(out))
""")



def saved_steps(workdir: Path) -> list[int]:
    """The steps of the checkpoints in a workdir, in order."""
    folder = workdir / checkpointing.LATEST_DIR
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() \
        else []


def kill_and_resume(launch, workdir: Path, targets, log: Path) -> list[int]:
    """Starts `launch(workdir)` (a Popen) again and again, SIGKILLing it once its newest
    checkpoint reaches each of `targets`, and lets the last start run to the end; returns the
    steps it was killed at."""
    import signal
    import time

    kills = []
    for target in [*targets, None]:
        proc = launch(workdir)
        while proc.poll() is None:
            steps = saved_steps(workdir)
            if target is not None and steps and steps[-1] >= target:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills.append(steps[-1])
                break
            time.sleep(0.01)
        else:
            assert proc.returncode == 0, log.read_text()[-3000:]
            break
    return kills


def subprocess_env() -> dict:
    """The environment of a `python -m launch.train` a test starts: this repo importable, and
    the session's compilation cache (tests/conftest.py), so each program compiles once."""
    assert "JAX_COMPILATION_CACHE_DIR" in os.environ, "the conftest fixture sets it"
    return dict(os.environ, PYTHONPATH=str(REPO))


def test_data_and_model_parallel_losses_match_one_device(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SHARDED_LOSSES, str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = json.loads(proc.stdout.strip().splitlines()[-1])
    reference = np.array(losses["1x1"])
    assert len(reference) == 4 and np.isfinite(reference).all()
    for mesh in ("8x1", "4x2", "4x1/2"):  # 4x1/2: the gradient over 2 microbatches
        np.testing.assert_allclose(losses[mesh], reference, rtol=1e-5, err_msg=mesh)


def test_microbatches_give_the_whole_batch_step():
    """Accumulated over 4 slices, the step's loss, accuracy, gradient norm and new parameters
    are the whole batch's (no dropout in this config)."""
    from rmt_jax import input_pipeline

    config = tiny_config({"curriculum.segments": (2,)})
    data = SyntheticData(config, process_index=0, process_count=1)
    batch = {k: v for k, v in next(data.iterator(0)).items() if k in train_lib.MODEL_INPUTS}
    model_config = input_pipeline.model_config(config, config.model.vocab_size)
    import optax

    tx = optax.sgd(1.0)  # new parameters = old - gradient: they compare the gradients
    state = train_state.create_train_state(model_config, tx, seed=0)
    graphdef = train_state.model_graphdef(model_config)
    outs = {m: jax.jit(train_state.make_train_step(graphdef, tx, m))(state, batch)
            for m in (1, 4)}
    (whole, metrics), (sliced, sliced_metrics) = outs[1], outs[4]
    for k in ("loss", "accuracy", "grad_norm"):
        np.testing.assert_allclose(sliced_metrics[k], metrics[k], rtol=1e-5, err_msg=k)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 sliced["params"], whole["params"])
    assert not np.allclose(jax.tree.leaves(whole["params"])[0],
                           jax.tree.leaves(state["params"])[0])  # the step moved them


def test_microbatches_that_do_not_split_the_batch_are_an_error(tmp_path):
    config = tiny_config({"train.microbatches": 3})  # batch 8
    with pytest.raises(ValueError, match="train.microbatches=3.*divisor of 8"):
        train_lib.train_and_evaluate(config, tmp_path / "w")
    assert not (tmp_path / "w").exists()
    with pytest.raises(ValueError, match="train.microbatches=0 must be >= 1"):
        train_lib.train_and_evaluate(tiny_config({"train.microbatches": 0}), tmp_path / "w")


def test_every_parameter_has_a_sharding_rule_and_an_unknown_one_is_an_error():
    from flax import nnx
    from jax.tree_util import DictKey

    from rmt_jax.core.config import get_config
    from rmt_jax.core.model import RMT

    for fields in ({}, {"memory": "rmt_r"}, {"memory": "rmt_r", "retrieval_variant": "shared_norm"},
                   {"memory": "armt", "d_mem": 8}):
        model = RMT(get_config("test", **fields), rngs=nnx.Rngs(0))
        # Every parameter of the model is named in one of the two tables: none raises.
        sharding.state_shardings(nnx.state(model, nnx.Param),
                                 jax.make_mesh((1, 1), ("data", "model")))
        for path, x in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param)):
            sharding.partition_spec(path, x.shape, 2)
    with pytest.raises(ValueError, match="blocks/attn/renamed .* no sharding rule"):
        sharding.partition_spec([DictKey(n) for n in ("blocks", 0, "attn", "renamed")],
                                (32, 32), 2)
    # One device on 'model': nothing is split, so an unknown name is no error.
    unsplit = sharding.partition_spec([DictKey("renamed")], (32, 32), 1)
    assert unsplit == jax.sharding.PartitionSpec()


# -- the held-out curriculum (early stopping) -------------------------------------------------
HELDOUT = {"train.num_steps": 14, "curriculum.segments": (1, 2),
           "curriculum.advance_on": "heldout", "curriculum.eval_every": 2,
           "curriculum.patience": 2, "curriculum.heldout_samples": 8,
           "curriculum.max_stage_steps": 8, "train.checkpoint_every": 3, "train.log_every": 2,
           "train.answer_rows": 0, "eval.every": 0, "model.dropout": 0.1}


def param_leaves(model) -> list[np.ndarray]:
    from flax import nnx

    return [np.array(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def curriculum_rows(workdir: Path) -> dict[int, dict]:
    """The held-out and stage-change metrics by step (a step logged again after a resume:
    the newest)."""
    rows: dict[int, dict] = {}
    for r in read_metrics(workdir):
        keys = {k: v for k, v in r.items() if k.startswith(("heldout/", "curriculum/"))}
        if keys:
            rows.setdefault(r["step"], {}).update(keys)
    return rows


def test_heldout_curriculum_starts_each_stage_from_the_best_state(tmp_path, monkeypatch):
    from rmt_jax import early_stopping

    scores = {2: 0.5, 4: 0.9, 6: 0.2, 8: 0.3,  # stage 0: best at 4, two worse: ends at 8
              10: 0.1, 12: 0.05, 14: 0.05}    # stage 1: best at 10, ends at 14: run over
    evaluated, restored = {}, []
    steps = iter(sorted(scores))

    def scripted(self, model, stage):
        step = next(steps)
        evaluated[step] = param_leaves(model)
        return {"exact_match": scores[step], "samples": 8.0}

    restore = early_stopping.StageBest.restore

    def recording(self, step, abstract_params, abstract_train):
        params, train = restore(self, step, abstract_params, abstract_train)
        restored.append((step, [np.array(x) for x in jax.tree.leaves(params)]))
        return params, train

    monkeypatch.setattr(early_stopping.Heldout, "score", scripted)
    monkeypatch.setattr(early_stopping.StageBest, "restore", recording)
    config = tiny_config({**HELDOUT, "train.num_steps": 20})
    out = train_lib.train_and_evaluate(config, tmp_path)
    assert out["step"] == 14  # the last stage ended early: training is over
    assert [s for s, _ in restored] == [4, 10]
    for step, params in restored:  # the best evaluation's parameters, not the newest
        assert all(np.array_equal(a, b) for a, b in zip(params, evaluated[step], strict=True))
        assert not all(np.array_equal(a, b)
                       for a, b in zip(params, evaluated[step + 4], strict=True))
    rows = curriculum_rows(tmp_path)
    assert {s for s, r in rows.items() if "curriculum/stage" in r} == {8, 14}
    assert rows[8]["curriculum/stage"] == 1 and rows[8]["curriculum/best_step"] == 4
    assert rows[14]["curriculum/stage"] == -1 and rows[14]["heldout/best_step"] == 10
    # the optimizer went back too: its schedule counts 4 + (10 - 8) updates at step 14
    logged = {r["step"]: r for r in read_metrics(tmp_path) if "train/learning_rate" in r}
    schedule = train_state.make_schedule(config)
    assert logged[14]["train/learning_rate"] == pytest.approx(float(schedule(6 - 1)))
    model, _, step = checkpointing.restore_for_inference(tmp_path)
    assert step == 14
    assert all(np.array_equal(a, b) for a, b in zip(param_leaves(model), evaluated[10],
                                                    strict=True))


def test_heldout_curriculum_killed_mid_stage_resumes_with_the_same_decisions(
        tmp_path, monkeypatch):
    import signal

    from rmt_jax import early_stopping

    real = early_stopping.Heldout.score
    calls = {"n": 0, "action": None}

    def varied(self, model, stage):
        """The real score, its exact match replaced by a function of the parameters, so that
        every decision depends on them (the tiny model answers nothing right yet)."""
        calls["n"] += 1
        if calls["action"] and calls["n"] == calls["action"][0]:
            calls["action"][1]()
        out = real(self, model, stage)
        out["exact_match"] = float(np.abs(np.asarray(model.wte[...])).mean() * 1e4 % 1.0)
        return out

    def sigterm():
        os.kill(os.getpid(), signal.SIGTERM)

    def crash():
        raise RuntimeError("killed")

    monkeypatch.setattr(early_stopping.Heldout, "score", varied)
    config = tiny_config(HELDOUT)
    last_step = train_lib.train_and_evaluate(config, tmp_path / "reference")["step"]
    reference = curriculum_rows(tmp_path / "reference")
    assert any("curriculum/stage" in r for r in reference.values())

    workdir = tmp_path / "killed"
    calls.update(n=0, action=(3, sigterm))  # SIGTERM during the evaluation of step 6
    assert train_lib.train_and_evaluate(config, workdir)["step"] == 6
    saved = checkpointing.Checkpointer(workdir)
    assert saved.latest.all_steps()[-1] == 6
    saved.close()
    calls.update(n=0, action=(4, crash))  # then killed in the middle of a later evaluation
    with pytest.raises(RuntimeError, match="killed"):
        train_lib.train_and_evaluate(config, workdir)
    calls.update(n=0, action=None)
    assert train_lib.train_and_evaluate(config, workdir)["step"] == last_step > 6
    assert curriculum_rows(workdir) == reference
    final = [param_leaves(checkpointing.restore_for_inference(d)[0])
             for d in (tmp_path / "reference", workdir)]
    assert all(np.array_equal(a, b) for a, b in zip(*final, strict=True))


def test_a_stage_without_room_for_a_story_stops_before_anything_is_written(tmp_path):
    shared = REPO.parent / "shared" / "data"
    if not (shared / "haystack").exists():
        pytest.skip(f"offline data {shared} is absent (expected ../shared/data beside the repo)")
    from configs import rmt_babilong

    config = rmt_babilong.get_config("smoke,qa1").unlock()
    config.data.haystack_dir = str(shared / "haystack")
    config.data.babi_dir = str(shared / "babi")
    config.curriculum.segments = (0.25, 1)  # 2 tokens: no qa1 story fits
    config.curriculum.advance_on = "heldout"
    with pytest.raises(ValueError, match=r"curriculum stage 0 \(0.25 segments, contexts of 2 "
                                         r"tokens\) cannot hold a held-out set"):
        train_lib.train_and_evaluate(config.lock(), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_mixed_length_ratio_rows_of_every_global_batch():
    from rmt_jax.input_pipeline import MixedLengths

    mixed = MixedLengths([("own", i) for i in range(40)], [("short", i) for i in range(40)],
                         rows=3, batch=8)
    for processes in (1, 2, 4):  # each process reads every processes-th record
        local = 8 // processes
        for batch in range(2):
            rows = [mixed[(batch * local + t) * processes + p]
                    for p in range(processes) for t in range(local)]
            assert sum(kind == "short" for kind, _ in rows) == 3
    config = tiny_config({"curriculum.segments": (1, 2, 4), "curriculum.mix_shorter": False,
                          "curriculum.mixed_length_ratio": 0.5})
    data = SyntheticData(config)
    seg, reserved = config.model.segment_len, data.curriculum.reserved
    segments = (data.batch(2, 0)["context_mask"].sum(-1) + reserved) // seg
    assert set(segments[:4]) <= {1, 2} and set(segments[4:]) == {4}
    assert set((data.batch(0, 0)["context_mask"].sum(-1) + reserved) // seg) == {1}


def test_same_length_batches_train_at_each_batchs_own_width(tmp_path):
    config = tiny_config({"curriculum.segments": (1, 4), "curriculum.stage_steps": 2,
                          "curriculum.same_length_batches": True, "train.num_steps": 10,
                          "train.log_every": 5, "eval.every": 0})
    seg, reserved = config.model.segment_len, 6
    halves = [SyntheticData(config, process_index=p, process_count=2) for p in (0, 1)]
    widths = [halves[0].batch(1, i)["context"].shape[1] for i in range(12)]
    assert set(widths) <= {k * seg - reserved for k in (1, 2, 3, 4)} and len(set(widths)) > 1
    assert widths == [halves[1].batch(1, i)["context"].shape[1] for i in range(12)]
    batch = halves[0].batch(1, 0)  # every row fills its batch's width
    assert (batch["context_mask"].sum(1) == batch["context"].shape[1]).all()
    out = train_lib.train_and_evaluate(config, tmp_path)  # compiles each width it meets
    assert out["step"] == 10 and np.isfinite(read_metrics(tmp_path)[-1]["train/loss"])


def test_heldout_set_is_generated_apart_from_training_and_scored_as_evaluation(
        small_haystack_dir, babi_root):
    from flax import nnx

    from configs import rmt_babilong
    from rmt_jax import early_stopping, input_pipeline
    from rmt_jax.core.model import RMT
    from rmt_jax.curriculum import Curriculum

    config = rmt_babilong.get_config("smoke,qa1").unlock()
    config.data.haystack_dir, config.data.babi_dir = str(small_haystack_dir), str(babi_root)
    config.data.babi_source = "files"  # training on the en-10k train files
    config.curriculum.segments, config.curriculum.mix_shorter = (16, 32), False
    config.curriculum.advance_on, config.curriculum.heldout_samples = "heldout", 6
    config = config.lock()
    composer = input_pipeline.make_composer(config)
    tokenizer = input_pipeline.make_tokenizer(config)
    heldout = early_stopping.Heldout(config, Curriculum.from_config(config), composer=composer,
                                     tokenizer=tokenizer)
    heldout.check()
    examples = heldout.examples(1)
    assert heldout.examples(1) is examples and len(examples) == 6  # made once per stage
    assert all(len(e["context"]) <= 32 * config.model.segment_len for e in examples)
    records = [heldout._source(1)[i] for i in range(6)]
    # stories of the simulator's test stream (odd seeds): never a bAbI file, never training's
    assert all(r["origin"].startswith("generated:qa1:") for r in records)
    assert all(int(r["origin"].split(":")[2]) % 2 == 1 for r in records)
    training = input_pipeline.TrainData(config, composer).source(1)[0]
    assert "_train.txt:" in training["origin"]  # en-10k train file
    model = RMT(input_pipeline.model_config(config, tokenizer.vocab_size), rngs=nnx.Rngs(0))
    scores = heldout.score(model, 1)
    assert scores["samples"] == 6 and 0 <= scores["exact_match"] <= scores["accuracy"] <= 1


def test_heldout_curriculum_sigkill_at_random_steps_then_resume_is_bitwise_exact(tmp_path):
    """launch.train killed (SIGKILL) in each stage, resumed: the same held-out decisions and
    bitwise the same final parameters as an uninterrupted run."""

    flags = ["--config=configs/rmt_babilong.py:smoke,synthetic",
             *(f"--config.{k}={v}" for k, v in {**HELDOUT, "train.checkpoint_every": 1,
                                                 "train.keep_checkpoints": 2}.items())]
    env = subprocess_env()

    def launch(workdir: Path) -> subprocess.Popen:
        log = (tmp_path / f"{workdir.name}.log").open("a")
        return subprocess.Popen([sys.executable, "-m", "launch.train", *flags,
                                 f"--workdir={workdir}"], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=log)

    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert launch(reference).wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()
    rng = np.random.default_rng()
    targets = (int(rng.integers(2, 7)), int(rng.integers(9, 13)))
    kills = kill_and_resume(launch, resumed, targets, tmp_path / "resumed.log")
    assert kills, "the run finished before any kill: make it longer"
    assert curriculum_rows(resumed) == curriculum_rows(reference), f"kills at {kills}"
    final = [param_leaves(checkpointing.restore_for_inference(d)[0])
             for d in (reference, resumed)]
    assert all(np.array_equal(a, b) for a, b in zip(*final, strict=True)), f"kills at {kills}"


def test_lr_scale_is_the_step_at_that_factor_times_the_learning_rate():
    """optim.stage_lr_scales reaches the step as a traced scalar: AdamW's step at factor s
    and rate r is the step at rate s * r (weight decay included), the moments unchanged."""
    import optax

    from rmt_jax import input_pipeline

    config = tiny_config({"curriculum.segments": (2,), "optim.weight_decay": 0.1})
    data = SyntheticData(config, process_index=0, process_count=1)
    batch = {k: v for k, v in next(data.iterator(0)).items() if k in train_lib.MODEL_INPUTS}
    model_config = input_pipeline.model_config(config, config.model.vocab_size)
    graphdef = train_state.model_graphdef(model_config)
    outs = {}
    for name, rate, scale in (("scaled", 1e-2, 0.1), ("lower", 1e-3, None),
                              ("unscaled", 1e-2, None)):
        tx = train_state.make_optimizer(config, optax.constant_schedule(rate))
        state = train_state.create_train_state(model_config, tx, seed=0)
        step = jax.jit(train_state.make_train_step(graphdef, tx))
        for _ in range(3):  # the moments differ from the update after the first step
            state, _ = step(state, batch, None if scale is None else jnp.float32(scale))
        outs[name] = state
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)  # noqa: E731
    jax.tree.map(close, outs["scaled"]["params"], outs["lower"]["params"])
    jax.tree.map(close, outs["scaled"]["opt_state"], outs["lower"]["opt_state"])
    assert not np.allclose(jax.tree.leaves(outs["scaled"]["params"])[0],
                           jax.tree.leaves(outs["unscaled"]["params"])[0])


def test_stage_lr_scales_apply_from_their_stage_on(tmp_path):
    base = {"train.num_steps": 6, "curriculum.segments": (1, 2), "curriculum.stage_steps": 3,
            "train.log_every": 1, "eval.every": 0, "train.answer_rows": 0,
            "optim.schedule": "constant", "optim.warmup_steps": 1}
    train_lib.train_and_evaluate(tiny_config(base), tmp_path / "plain")
    scaled_config = tiny_config({**base, "optim.stage_lr_scales": (1.0, 0.25)})
    train_lib.train_and_evaluate(scaled_config, tmp_path / "scaled")
    plain, scaled = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "scaled")
    peak = scaled_config.optim.learning_rate
    rates = [m["train/learning_rate"] for m in scaled]
    segments = [m["train/segments"] for m in scaled]
    assert segments == [1, 1, 2, 2, 2, 2]  # logged after step 3 moved the curriculum on
    np.testing.assert_allclose(rates[1:], [peak] * 2 + [0.25 * peak] * 3, rtol=1e-6)
    losses = lambda ms: [m["train/loss"] for m in ms]  # noqa: E731
    # the same run to the stage change (step 4 runs at the new factor), another after it
    np.testing.assert_allclose(losses(scaled)[:4], losses(plain)[:4], rtol=1e-6)
    assert not np.allclose(losses(scaled)[4:], losses(plain)[4:], rtol=1e-6)


@pytest.mark.parametrize("scales", [(1.0,), (1.0, 0.0), (1.0, -1.0), ("a", 1.0),
                                    (1.0, float("inf"))])
def test_stage_lr_scales_that_do_not_fit_the_curriculum_are_an_error(tmp_path, scales):
    config = tiny_config({"curriculum.segments": (1, 2), "optim.stage_lr_scales": scales})
    with pytest.raises(ValueError, match=r"optim.stage_lr_scales=.*2 curriculum stages.*"
                                         r"--config.optim.stage_lr_scales='\(1,1\)'"):
        train_lib.train_and_evaluate(config, tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_host_waits_for_the_oldest_dispatched_step():
    # the loop reads no metric between logs; without a bound the host queues steps as fast
    # as it makes batches, and a SIGTERM then waits for all of them before the checkpoint
    waited = []

    class Loss:
        def __init__(self, step):
            self.step = step

        def block_until_ready(self):
            waited.append(self.step)
            return self

    run = object.__new__(train_lib.TrainingRun)
    run.in_flight = []
    for step in range(6):
        run.wait_for_device(Loss(step))
        assert len(run.in_flight) <= train_lib.MAX_STEPS_AHEAD
    assert waited == list(range(6 - train_lib.MAX_STEPS_AHEAD))
    assert [loss.step for loss in run.in_flight] == [4, 5]
