"""Resuming a workdir: a changed config is refused before anything moves, and only a
checkpoint that fails to read is set aside (under a name of its own)."""

import hashlib
import logging
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from flax import nnx

from rmt_jax import checkpointing, input_pipeline, train_lib
from rmt_jax.core.config import ModelConfig
from rmt_jax.core.model import RMT
from tests.test_train_lib import subprocess_env, tiny_config

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("fast_compiles")
RUN = {"train.num_steps": 3, "train.checkpoint_every": 1, "eval.every": 0,
       "train.answer_rows": 0, "curriculum.segments": (1,)}


def digest(root: Path) -> dict[str, str]:
    """Every file and folder under root: sha256 of the bytes (files) or 'dir'."""
    out = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        out[key] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def corrupt(checkpoint: Path) -> None:
    for path in checkpoint.rglob("*"):
        if path.is_file():
            path.write_bytes(b"\x00garbage")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fast_compiles) -> Path:
    """A workdir of 3 steps with checkpoints 1, 2, 3 (test config, synthetic data)."""
    workdir = tmp_path_factory.mktemp("trained") / "run"
    train_lib.train_and_evaluate(tiny_config(RUN), workdir)
    return workdir


def copy_of(trained: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(trained, tmp_path / "run"))


def test_launch_refuses_a_changed_model_and_touches_nothing(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    before = digest(workdir)
    flags = ["--config=configs/rmt_babilong.py:smoke,synthetic", "--config.eval.every=0",
             "--config.train.answer_rows=0", "--config.curriculum.segments=(1,)",
             "--config.train.checkpoint_every=1", "--config.train.num_steps=5",
             "--config.model.mem_tokens=3", f"--workdir={workdir}"]
    done = subprocess.run([sys.executable, "-m", "launch.train", *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env=subprocess_env())
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert "model.mem_tokens 2 -> 3" in errors[0] and "train.num_steps 3 -> 5" in errors[0]
    assert "--workdir" in errors[0] and "Traceback" not in done.stderr
    assert digest(workdir) == before


@pytest.mark.parametrize("change", [{"model.d_model": 64, "model.layers": 2},
                                    {"model.mem_tokens": 3}])
def test_model_shape_changes_are_never_allowed(trained, tmp_path, change):
    workdir = copy_of(trained, tmp_path)
    before = digest(workdir)
    config = tiny_config({**RUN, **change})
    allow = [k for k in change]
    with pytest.raises(ValueError, match="parameter") as error:
        train_lib.train_and_evaluate(config, workdir, allow_config_change=allow)
    for field in change:
        assert field in str(error.value)
    assert digest(workdir) == before


def test_an_allowed_change_resumes_and_is_recorded(trained, tmp_path, caplog):
    workdir = copy_of(trained, tmp_path)
    config = tiny_config({**RUN, "train.num_steps": 5, "optim.learning_rate": 1e-3})
    before = digest(workdir)
    with pytest.raises(ValueError, match="optim.learning_rate") as error:
        train_lib.train_and_evaluate(config, workdir, allow_config_change=["train.num_steps"])
    assert "--allow_config_change" in str(error.value)
    assert digest(workdir) == before
    with pytest.raises(ValueError, match="unknown config field 'optim.lr'"):
        train_lib.train_and_evaluate(config, workdir, allow_config_change=["optim.lr"])
    with caplog.at_level(logging.INFO):
        out = train_lib.train_and_evaluate(
            config, workdir, allow_config_change=["train.num_steps", "optim"])
    assert "resumed from step 3" in caplog.text and out["step"] == 5
    saved, _ = checkpointing.read_configs(workdir)
    assert saved.train.num_steps == 5 and saved.optim.learning_rate == 1e-3
    # the run's cadence (logging, checkpoints, evaluation) and what the backward pass
    # recomputes may change without the flag
    config = tiny_config({**RUN, "train.num_steps": 5, "optim.learning_rate": 1e-3,
                          "train.log_every": 1, "train.checkpoint_every": 2,
                          "model.remat_policy": "dots_with_no_batch_dims_saveable",
                          "model.scan_unroll": 2})
    assert train_lib.train_and_evaluate(config, workdir)["step"] == 5


def test_a_workdir_from_before_a_new_config_field_resumes(trained, tmp_path, caplog):
    import json

    workdir = copy_of(trained, tmp_path)
    for name, drop in ((checkpointing.CONFIG_FILE, ("model", "scan_unroll")),
                       (checkpointing.MODEL_CONFIG_FILE, ("scan_unroll",))):
        saved = json.loads((workdir / name).read_text())
        node = saved
        for key in drop[:-1]:
            node = node[key]
        del node[drop[-1]]
        (workdir / name).write_text(json.dumps(saved))
    with caplog.at_level(logging.INFO):
        assert train_lib.train_and_evaluate(tiny_config(RUN), workdir)["step"] == 3
    assert "resumed from step 3" in caplog.text
    assert "model.scan_unroll (absent) -> 1" in caplog.text


def test_a_model_field_now_unset_resumes(trained, tmp_path, caplog):
    """Old RMT configs held RMT-R's retrieval_dropout (0.1); today it is unset (None) for any
    other memory: the workdir resumes with a warning, without --allow_config_change."""
    import json

    workdir = copy_of(trained, tmp_path)
    path = workdir / checkpointing.CONFIG_FILE
    saved = json.loads(path.read_text())
    assert saved["model"]["retrieval_dropout"] is None
    saved["model"]["retrieval_dropout"] = 0.1
    path.write_text(json.dumps(saved))
    with caplog.at_level(logging.INFO):
        assert train_lib.train_and_evaluate(tiny_config(RUN), workdir)["step"] == 3
    assert "model.retrieval_dropout 0.1 -> null" in caplog.text
    # a real change of a model field is still refused
    config = tiny_config({**RUN, "model.dropout": 0.5})
    with pytest.raises(checkpointing.ConfigChangeError, match="model.dropout"):
        train_lib.train_and_evaluate(config, workdir)


def test_the_committed_qa1_cpu_workdir_takes_its_readme_resume_command():
    """results/qa1_cpu/train_workdir (the shipped model's full checkpoint, step 23,818) is kept
    to be resumed: the config of results/qa1_cpu/resume32/run.sh's resume command passes the
    run checks and the resume check with no change at all (with --config.model.canon_kernel=0,
    since the config has Canon layers)."""
    from configs import qa1_cpu

    workdir = REPO / "results" / "qa1_cpu" / "train_workdir"
    if not (workdir / checkpointing.CONFIG_FILE).exists():
        pytest.skip(f"{workdir} is not in this checkout")
    config = qa1_cpu.get_config("")
    config.model.bptt_segments = 4  # the command's flags
    config.model.canon_kernel = 0  # (the config has Canon layers since the run)
    train_lib.check_run_config(config)
    model_config = input_pipeline.model_config(config, 8192)  # the shipped sentencepiece's
    assert checkpointing.check_config_change(workdir, config, model_config, allow=()) == {}
    # without the flag the resume would turn truncation off: refused, the field named
    config.model.bptt_segments = None
    model_config = input_pipeline.model_config(config, 8192)
    with pytest.raises(checkpointing.ConfigChangeError,
                       match=r"model.bptt_segments 4 -> null.*allow_config_change"):
        checkpointing.check_config_change(workdir, config, model_config, allow=())
    # without --config.model.canon_kernel=0 the config's Canon layers would change the
    # parameters' shapes: refused, the field named
    config.model.bptt_segments, config.model.canon_kernel = 4, 4
    model_config = input_pipeline.model_config(config, 8192)
    with pytest.raises(checkpointing.ConfigChangeError, match=r"model.canon_kernel 0 -> 4"):
        checkpointing.check_config_change(workdir, config, model_config, allow=())


def test_only_a_checkpoint_that_fails_to_read_is_set_aside_each_under_its_own_name(
        trained, tmp_path, caplog):
    workdir = copy_of(trained, tmp_path)
    config = tiny_config(RUN)
    corrupt_dir = workdir / checkpointing.CORRUPT_DIR
    for attempt in range(2):
        corrupt(workdir / checkpointing.LATEST_DIR / "3")
        with caplog.at_level(logging.INFO):
            assert train_lib.train_and_evaluate(config, workdir)["step"] == 3
        assert "resumed from step 2" in caplog.text
        assert len(list(corrupt_dir.iterdir())) == attempt + 1
    assert (corrupt_dir / "checkpoints_3").is_dir()
    # both set-aside copies are still there: the second did not overwrite the first
    assert all(any(p.is_file() for p in d.rglob("*")) for d in corrupt_dir.iterdir())


def test_inference_restore_moves_nothing(trained, tmp_path, caplog):
    workdir = copy_of(trained, tmp_path)
    corrupt(workdir / checkpointing.LATEST_DIR / "3")
    before = digest(workdir)
    with caplog.at_level(logging.WARNING):
        _, _, step = checkpointing.restore_for_inference(workdir)
    assert step == 2 and "step 3" in caplog.text
    assert digest(workdir) == before
    with pytest.raises(ValueError, match="step 3"):
        checkpointing.restore_for_inference(workdir, step=3)
    assert digest(workdir) == before


def test_export_moves_nothing(trained, tmp_path):
    from launch import export_checkpoint

    workdir = copy_of(trained, tmp_path)
    corrupt(workdir / checkpointing.LATEST_DIR / "3")
    before = digest(workdir)
    out = export_checkpoint.export(str(workdir), str(tmp_path / "export"))
    assert digest(workdir) == before
    assert checkpointing.restore_for_inference(out, "best")[2] == 2


def test_export_entry_point(trained, tmp_path):
    def run(*flags):
        return subprocess.run([sys.executable, "-m", "launch.export_checkpoint", *flags],
                              cwd=REPO, capture_output=True, text=True, timeout=300)

    before = digest(trained)
    done = run(f"--workdir={trained}", f"--out_dir={tmp_path / 'export'}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith(f"exported to {tmp_path / 'export'} (") and "MiB" in done.stdout
    assert digest(trained) == before
    done = run(f"--workdir={tmp_path / 'absent'}", f"--out_dir={tmp_path / 'export2'}")
    assert done.returncode != 0 and done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not (tmp_path / "export2").exists()


def test_a_checkpoint_of_another_model_is_not_set_aside(trained, tmp_path):
    """model_config.json edited by hand: the checkpoints read fine but do not fit."""
    workdir = copy_of(trained, tmp_path)
    path = workdir / checkpointing.MODEL_CONFIG_FILE
    path.write_text(path.read_text().replace('"d_model": 32', '"d_model": 64'))
    before = digest(workdir)
    with pytest.raises(ValueError, match="shape"):
        checkpointing.restore_for_inference(workdir)
    assert digest(workdir) == before


def test_param_fields_are_the_fields_that_change_parameter_shapes():
    config = tiny_config()
    base = input_pipeline.model_config(config, 64)

    def shapes(model_config: ModelConfig):
        abstract = nnx.state(nnx.eval_shape(lambda: RMT(model_config, rngs=nnx.Rngs(0))))
        return (str(jax.tree_util.tree_structure(abstract)),
                [(x.shape, str(x.dtype)) for x in jax.tree.leaves(abstract)])

    variants = {"layers": 2, "d_model": 64, "heads": 4, "vocab_size": 65, "mem_tokens": 3,
                "max_positions": 40, "memory": "rmt_r", "param_dtype": "bfloat16",
                "segment_len": 9, "dtype": "bfloat16", "dropout": 0.2,
                "remat_policy": "full", "scan_unroll": 2,
                "bptt_segments": 1, "attention_impl": "xla", "attention_chunk": 4,
                "answer_mode": "separate",
                "positions": "rope", "init_std": 0.1, "scaled_residual_init": False,
                "write_positions": "own", "tied_head": False, "canon_kernel": 4}
    # fields that only exist with a memory variant: (the variant, the field changed)
    within = {"d_mem": ({"memory": "armt", "d_mem": 8}, {"d_mem": 16}),
              "retrieval_dropout": ({"memory": "rmt_r"}, {"retrieval_dropout": 0.2}),
              "retrieval_variant": ({"memory": "rmt_r"}, {"retrieval_variant": "shared_norm"})}
    assert (set(variants) | set(within) | {"attention_map_layers"}
            == set(ModelConfig.__dataclass_fields__))
    cases = [(name, {}, {name: value}) for name, value in variants.items()]
    cases += [(name, start, change) for name, (start, change) in within.items()]
    for name, start, change in cases:
        reference = shapes(base.replace(**start))
        changed = shapes(base.replace(**{**start, **change}))
        assert (changed != reference) == (name in checkpointing.PARAM_FIELDS), name
