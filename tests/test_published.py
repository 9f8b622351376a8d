"""The one reader of published BABILong samples, and the Hugging Face layout writer."""

import json
import os
import re
import subprocess
import sys

import pytest

from babilong_tfds.build import export_jsonl
from babilong_tfds.published import describe, find_splits, load_samples, write_hf_dir

from .conftest import REPO


def _samples(task, length, n=3):
    return [
        {
            "input": f"{task} {length} context {i}. Mary went to the office.",
            "question": f"Where is Mary {i}?",
            "target": "office",
            "task": task,
            "length": length,
            "fact_offsets": [i, i + 5],
            "seed": 0,
            "index": i,
        }
        for i in range(n)
    ]


def test_reads_the_jsonl_export(tmp_path):
    written = _samples("qa1", "1k")
    export_jsonl(written, tmp_path / "qa1" / "1k.jsonl")
    export_jsonl(_samples("qa2", "0k"), tmp_path / "qa2" / "0k.jsonl")
    export_jsonl(_samples("qa1", "1k"), tmp_path / "qa1" / "1k_train.jsonl")  # not a test set
    got = load_samples(str(tmp_path), "qa1", "1k")
    assert got == written
    assert set(find_splits(tmp_path)) == {("qa1", "1k"), ("qa2", "0k")}


def test_a_missing_task_or_length_names_what_is_there(tmp_path):
    export_jsonl(_samples("qa1", "1k"), tmp_path / "qa1" / "1k.jsonl")
    export_jsonl(_samples("qa1", "0k"), tmp_path / "qa1" / "0k.jsonl")
    with pytest.raises(ValueError, match=r"no qa1 at 4k: it holds qa1 at 0k, 1k"):
        load_samples(str(tmp_path), "qa1", "4k")
    with pytest.raises(ValueError, match=r"no qa3 at 1k: it holds qa1 at 0k, 1k"):
        load_samples(str(tmp_path), "qa3", "1k")
    with pytest.raises(ValueError, match="unknown task 'qa21'"):
        load_samples(str(tmp_path), "qa21", "1k")
    with pytest.raises(ValueError, match="not a folder"):
        load_samples(str(tmp_path / "absent"), "qa1", "1k")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="nothing recognisable"):
        load_samples(str(empty), "qa1", "1k")


def test_a_sample_without_the_published_fields_is_refused(tmp_path):
    path = tmp_path / "qa1" / "0k.jsonl"
    path.parent.mkdir()
    path.write_text(json.dumps({"input": "x", "question": "y"}) + "\n")
    with pytest.raises(ValueError, match="sample 0 of qa1 at 0k .* lacks target"):
        load_samples(str(tmp_path), "qa1", "0k")


def test_reads_the_published_card_layout_json_array_and_lines(tmp_path):
    """Today's RMT-team/babilong: README configs -> data/{task}/{length}.json."""
    (tmp_path / "README.md").write_text(
        "---\nlanguage:\n- en\nconfigs:\n- config_name: 0k\n  data_files:\n"
        "  - split: qa1\n    path: data/qa1/0k.json\n  - split: qa2\n    path: data/qa2/0k.json\n"
        "- config_name: 1k\n  data_files:\n  - split: qa1\n    path: data/qa1/1k.json\n"
        "---\n# card\n"
    )
    qa1_0k = [{k: s[k] for k in ("input", "question", "target")} for s in _samples("qa1", "0k")]
    (tmp_path / "data" / "qa1").mkdir(parents=True)
    (tmp_path / "data" / "qa2").mkdir(parents=True)
    (tmp_path / "data" / "qa1" / "0k.json").write_text(json.dumps(qa1_0k))  # one array
    lines = _samples("qa1", "1k")
    (tmp_path / "data" / "qa1" / "1k.json").write_text("".join(json.dumps(s) + "\n" for s in lines))
    (tmp_path / "data" / "qa2" / "0k.json").write_text(json.dumps(qa1_0k[:1]))
    assert load_samples(str(tmp_path), "qa1", "0k") == qa1_0k
    assert load_samples(str(tmp_path), "qa1", "1k") == lines
    assert len(load_samples(str(tmp_path), "qa2", "0k")) == 1
    with pytest.raises(ValueError, match=r"no qa2 at 1k: it holds qa1 at 0k, 1k; qa2 at 0k"):
        load_samples(str(tmp_path), "qa2", "1k")


def test_reads_the_parquet_layouts(tmp_path):
    """Earlier revisions and the 1k-samples set: {length}/{task}-0000i-of-0000n.parquet."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    samples = _samples("qa3", "2k", n=4)
    (tmp_path / "2k").mkdir()
    for shard in range(2):
        rows = samples[2 * shard : 2 * shard + 2]
        pq.write_table(
            pa.Table.from_pylist(rows), tmp_path / "2k" / f"qa3-0000{shard}-of-00002.parquet"
        )
    old = tmp_path / "old"
    (old / "qa5").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(samples), old / "qa5" / "8k-00000-of-00001.parquet")
    assert load_samples(str(tmp_path), "qa3", "2k") == samples
    assert load_samples(str(old), "qa5", "8k") == samples


def test_write_hf_dir_reads_back_here_and_in_datasets(tmp_path):
    out = tmp_path / "hf"
    written = {("qa1", "0k"): _samples("qa1", "0k"), ("qa1", "1k"): _samples("qa1", "1k", n=5)}
    files = write_hf_dir(out, written)
    names = sorted(p.relative_to(out).as_posix() for p in files)
    assert [re.sub(r"-[0-9a-f]{16}\.json$", ".json", n) for n in names] == [
        "data/qa1/0k.json",
        "data/qa1/1k.json",
    ]
    first = json.loads(files[1].read_text().splitlines()[0])
    assert list(first)[:3] == ["input", "question", "target"]
    assert load_samples(str(out), "qa1", "1k") == written[("qa1", "1k")]
    # A second write adds a split and keeps the first ones.
    write_hf_dir(out, {("qa2", "1k"): _samples("qa2", "1k")})
    assert describe(find_splits(out)) == "qa1 at 0k, 1k; qa2 at 1k"
    assert load_samples(str(out), "qa1", "0k") == written[("qa1", "0k")]
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no temporary folders left

    datasets = pytest.importorskip("datasets")
    cache = tmp_path / "hf_cache"
    ds = datasets.load_dataset(str(out), "1k", split="qa1", cache_dir=str(cache))
    assert [dict(r) for r in ds] == written[("qa1", "1k")]
    ds = datasets.load_dataset(str(out), "1k", split="qa2", cache_dir=str(cache))
    assert ds["target"] == ["office"] * 3
    # datasets caches a split by the file names the card lists: a rewritten split must not
    # read back stale.
    rewritten = [{**s, "target": "garden"} for s in _samples("qa2", "1k")]
    write_hf_dir(out, {("qa2", "1k"): rewritten})
    ds = datasets.load_dataset(str(out), "1k", split="qa2", cache_dir=str(cache))
    assert ds["target"] == ["garden"] * 3


def test_write_hf_dir_leaves_nothing_half_written(tmp_path):
    out = tmp_path / "hf"
    write_hf_dir(out, {("qa1", "0k"): _samples("qa1", "0k")})
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = _samples("qa2", "0k")
    del bad[1]["target"]
    with pytest.raises(ValueError, match="lacks target"):
        write_hf_dir(out, {("qa1", "0k"): _samples("qa1", "0k", n=7), ("qa2", "0k"): bad})
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]
    with pytest.raises(ValueError, match="unknown length"):
        write_hf_dir(tmp_path / "other", {("qa1", "3k"): []})
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="non-empty folder without a README.md"):
        write_hf_dir(stray, {("qa1", "0k"): _samples("qa1", "0k")})


def test_the_hub_offline_is_a_clear_error(tmp_path):
    """hf:NAME goes through datasets.load_dataset; offline that is a ValueError saying so."""
    pytest.importorskip("datasets")
    code = (
        "from babilong_tfds.published import load_samples\n"
        "try:\n"
        "    load_samples('hf:RMT-team/babilong', 'qa1', '1k')\n"
        "except ValueError as e:\n"
        "    print('ValueError:', e)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "ValueError: cannot read hf:RMT-team/babilong (config 1k, split qa1)" in out.stdout
    assert "--data=DIR" in out.stdout


def test_export_hf_dir_from_a_build(tmp_path, manual_dir):
    """A TFDS build written in the published layout reads back as its JSONL export."""
    from babilong_tfds.build import BuildOptions, build, export_hf_dir

    results = build(
        "qa1,qa2",
        "0k,1k",
        data_dir=tmp_path / "tfds",
        manual_dir=manual_dir,
        jsonl_dir=tmp_path / "jsonl",
        options=BuildOptions(num_samples=3),
    )
    files = export_hf_dir(results, data_dir=tmp_path / "tfds", hf_dir=tmp_path / "hf")
    assert len(files) == 4
    for task in ("qa1", "qa2"):
        for length in ("0k", "1k"):
            from_hf = load_samples(str(tmp_path / "hf"), task, length)
            assert from_hf == load_samples(str(tmp_path / "jsonl"), task, length)
            assert len(from_hf) == 3 and from_hf[0]["task"] == task
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset(str(tmp_path / "hf"), "1k", split="qa2")
    assert ds["target"] == [s["target"] for s in load_samples(str(tmp_path / "jsonl"), "qa2", "1k")]


def run_build(*args):
    return subprocess.run(
        [sys.executable, "-m", "launch.build_babilong", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_build_script_hf_dir_and_data(tmp_path, manual_dir):
    common = ["--tasks=qa1", "--lengths=0k", "--num_samples=2", f"--manual_dir={manual_dir}"]
    out = run_build(*common, f"--data_dir={tmp_path / 'tfds'}", f"--hf_dir={tmp_path / 'hf'}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "wrote 1 splits in the Hugging Face layout" in out.stdout
    assert len(load_samples(str(tmp_path / "hf"), "qa1", "0k")) == 2
    # --data copies published samples (here the folder just written) without building.
    out = run_build(
        "--tasks=qa1", "--lengths=0k", f"--data={tmp_path / 'hf'}", f"--hf_dir={tmp_path / 'copy'}"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    for path in (tmp_path / "hf").rglob("*"):
        if path.is_file():
            copied = tmp_path / "copy" / path.relative_to(tmp_path / "hf")
            assert copied.read_bytes() == path.read_bytes()
    bad = run_build(
        *common, "--split=all", f"--data_dir={tmp_path / 'b'}", f"--hf_dir={tmp_path / 'bad'}"
    )
    assert bad.returncode == 1 and "error: --hf_dir holds one split" in bad.stderr
    assert not (tmp_path / "b").exists() and not (tmp_path / "bad").exists()
    bad = run_build(
        "--tasks=qa1", "--lengths=1k", f"--data={tmp_path / 'hf'}", f"--hf_dir={tmp_path / 'bad'}"
    )
    assert bad.returncode == 1 and "holds no qa1 at 1k: it holds qa1 at 0k" in bad.stderr
    assert not (tmp_path / "bad").exists()
