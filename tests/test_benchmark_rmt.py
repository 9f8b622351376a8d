"""launch.benchmark_rmt runs each mode on the test preset and writes complete records."""

import json
import subprocess
import sys
import textwrap

import pytest

from .conftest import REPO

SHAPE_KEYS = {"layers", "d_model", "heads", "vocab", "segment_len", "mem_tokens", "batch",
              "segments", "dtype", "mode", "remat_policy", "attention_impl", "retrieval"}
FIGURES = {"tokens_per_s", "tokens_per_s_fastest", "min_s", "compile_s", "peak_memory_gib",
           "model_flops_per_s", "bf16_peak_flops_per_s", "mfu"}


@pytest.mark.parametrize("mode,extra", [("infer", ["--scan_unroll=2", "--profile_dir=PROF",
                                                   "--memory=armt"]),
                                        ("train", ["--retrieval", "--remat_policy=full",
                                                   "--bptt_segments=2"])])
def test_benchmark_writes_a_full_record(tmp_path, mode, extra):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "launch.benchmark_rmt", "--preset=test", f"--mode={mode}",
           "--batch=2", "--segments=3", "--repeats=1", "--peak_matmul_n=64", "--dtype=fp32",
           f"--out={out}", *[e.replace("PROF", str(tmp_path / "prof")) for e in extra]]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (record,) = json.loads(out.read_text())
    assert SHAPE_KEYS | FIGURES <= set(record)
    assert record["mode"] == mode and record["segments"] == 3 and record["batch"] == 2
    train = mode == "train"
    assert record["retrieval"] == train
    assert record["memory"] == ("rmt_r" if train else "armt")
    assert record["d_mem"] == (0 if train else 8)  # d_model / 4 of the test preset
    assert record["remat_policy"] == ("full" if train else "none")
    assert record["scan_unroll"] == (1 if train else 2)
    assert record["bptt_segments"] == (2 if train else None)
    if not train:  # the profiled call: its device (here: host XLA op) events were read
        assert record["profile"]["events"] > 0
        assert 0 < record["profile"]["busy_fraction"] <= 1
    assert all(record[k] > 0 for k in FIGURES)
    assert record["min_s"] <= record["median_s"]
    assert record["attention_impl"] == "einsum"  # the CPU's default
    # the printed JSON line is the record
    assert json.loads(done.stdout.strip().splitlines()[-1]) == record


@pytest.mark.parametrize("flags,message", [
    (["--retrieval", "--memory=armt"], "--retrieval is RMT-R but --memory=armt"),
    (["--d_mem=8"], "--d_mem=8 is ARMT's key width but the memory is rmt"),
    (["--memory=armt", "--d_mem=64"], "ARMT's d_mem=64 must lie in 1..d_model=32"),
])
def test_bad_memory_flags_are_error_lines(tmp_path, flags, message):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "launch.benchmark_rmt", "--preset=test",
                           f"--out={out}", *flags], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and message in done.stderr.strip().splitlines()[-1]
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not out.exists()


def test_benchmark_needs_no_data_stack():
    """The GPU image has jax, flax and optax but neither grain, TFDS nor ml_collections:
    the benchmark and the trace summary import without them."""
    code = textwrap.dedent("""
        import importlib.abc, sys
        BLOCKED = {"grain", "tensorflow_datasets", "ml_collections", "array_record",
                   "tensorflow", "blingfire", "nltk", "tokenizers", "sentencepiece"}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked: {name}")
        sys.meta_path.insert(0, Block())
        import launch.benchmark_rmt, launch.trace_summary
        # Of the dataset package, only its dependency-free modules (the atomic write).
        data = sorted(m for m in sys.modules if m.startswith("babilong_tfds."))
        assert data == ["babilong_tfds.files", "babilong_tfds.tasks"], data
        print("imported")
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr[-2000:]


@pytest.mark.parametrize("flag,head", [(None, "1"), ("--peer_head=0", "0")])
def test_peer_gets_the_shape_and_the_head_asked_for(tmp_path, flag, head):
    """--peer runs the peer script with our shape; the LM head is on every segment for a
    training step unless --peer_head=0 (a stand-in script echoes its arguments)."""
    peer = tmp_path / "peer.py"
    peer.write_text("import json, sys\nprint(json.dumps({'argv': sys.argv[1:], "
                    "'tokens_per_s': 1.0}))\n")
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "launch.benchmark_rmt", "--preset=test", "--mode=train",
           "--batch=2", "--segments=3", "--repeats=1", "--peak_matmul_n=64", "--dtype=fp32",
           "--peer", f"--peer_script={peer}", f"--out={out}", *([flag] if flag else [])]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (record,) = json.loads(out.read_text())
    argv = record["peer"]["argv"]
    assert f"--head={head}" in argv and "--batch=2" in argv and "--segments=3" in argv
    assert "--mode=train" in argv and "--layers=2" in argv
