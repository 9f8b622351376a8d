"""Builds that failed, or failed late, for reasons other than bad sample options (issue 11):
large splits without TensorFlow, damaged caches, bad folders, leftovers of interrupted builds."""

import importlib.util
import os
import subprocess
import sys
import time

import pytest
import tensorflow_datasets as tfds

from babilong_tfds.babilong import babilong_dataset_builder as builder_lib
from babilong_tfds.build import BuildOptions, build

from .conftest import REPO
from .test_builder import split_records


def test_a_split_past_the_shuffle_buffer_builds_without_tensorflow(tmp_path, manual_dir,
                                                                    monkeypatch):
    """TFDS's generator writer keeps a split in memory and spills it past 1000 MiB through
    tf.io.gfile: a 10M test set failed without TensorFlow after 23 samples. Made small here by
    a buffer of 0 bytes; the builder writes shards as records are made and never spills."""
    from tensorflow_datasets.core import shuffle

    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("TensorFlow is installed: TFDS could spill through it")
    monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 0)
    options = BuildOptions(num_samples=3)
    build("qa1", "1k", data_dir=tmp_path, manual_dir=manual_dir, options=options)
    name = options.config("qa1", "1k").name
    source = tfds.data_source(f"babilong/{name}", split="test", data_dir=tmp_path)
    assert [int(source[i]["index"]) for i in range(len(source))] == [0, 1, 2]


def test_shards_bound_the_tokens_of_a_split():
    assert builder_lib.shard_ranges(5, 0) == [(0, 5)]
    ranges = builder_lib.shard_ranges(100, 10_000_000)
    assert ranges[0] == (0, 6) and ranges[-1] == (96, 100) and len(ranges) == 17
    assert builder_lib.shard_ranges(1000, 1_000_000)[:2] == [(0, 67), (67, 134)]
    assert builder_lib.shard_ranges(4, 1_000_000, records_per_sample=64) == [
        (0, 1), (1, 2), (2, 3), (3, 4)]


def test_many_shards_hold_the_records_of_one_in_order(tmp_path, manual_dir, monkeypatch):
    options = BuildOptions(num_samples=5)
    name = options.config("qa1", "1k").name
    build("qa1", "1k", data_dir=tmp_path / "one", manual_dir=manual_dir, options=options)
    monkeypatch.setattr(builder_lib, "SHARD_TOKENS", 2000)  # two 1k samples a shard
    build("qa1", "1k", data_dir=tmp_path / "three", manual_dir=manual_dir, options=options)
    shards = sorted((tmp_path / "three" / "babilong" / name / "2.0.0").glob("*.array_record-*"))
    assert [s.name[-14:] for s in shards] == ["00000-of-00003", "00001-of-00003",
                                              "00002-of-00003"]
    assert split_records(tmp_path / "three", name) == split_records(tmp_path / "one", name)
    source = tfds.data_source(f"babilong/{name}", split="test", data_dir=tmp_path / "three")
    assert [int(source[i]["index"]) for i in range(len(source))] == [0, 1, 2, 3, 4]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


# -- where results go, checked before the compute ------------------------------------------
def test_output_checks_name_the_flag_and_leave_nothing(tmp_path):
    from launch.outputs import check_output_dir, check_output_file

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match=r"--out=.* is a folder: name a file"):
        check_output_file(tmp_path)
    with pytest.raises(ValueError, match=r"file.txt is a file, not a folder"):
        check_output_file(a_file / "sub" / "out.json")
    with pytest.raises(ValueError, match=r"--out_dir=.*file.txt is a file, not a folder"):
        check_output_dir(a_file, "--out_dir")
    with pytest.raises(ValueError, match=r"holds no JSON list .* appended"):
        check_output_file(a_file, json_list=True)
    (tmp_path / "list.json").write_text("[]")
    check_output_file(tmp_path / "list.json", json_list=True)
    check_output_file(tmp_path / "new" / "deeper" / "out.json")
    check_output_dir(tmp_path / "new_dir", "--out_dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "list.json"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only folders")
def test_a_read_only_output_folder_is_refused(tmp_path):
    from launch.outputs import check_output_file

    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        with pytest.raises(ValueError, match=r"cannot write in .*ro .*fix its permissions"):
            check_output_file(tmp_path / "ro" / "out.json")
    finally:
        (tmp_path / "ro").chmod(0o755)


def test_entry_points_refuse_a_bad_output_before_computing(tmp_path, shared_data):
    """Each entry point stops at once with an `error:` line naming its output flag: nothing
    printed before it, the bad path untouched. (They used to find it after the work.)"""
    a_file = tmp_path / "not_a_folder"
    a_file.write_text("x")
    not_a_list = tmp_path / "records.json"
    not_a_list.write_text('{"a": 1}')
    runs = {
        "benchmark_babilong": [f"--manual_dir={shared_data}", f"--out={tmp_path}"],
        "benchmark_llm_runner": [f"--manual_dir={shared_data}", f"--out={a_file}/x.json"],
        "benchmark_rmt": ["--preset=tiny", f"--out={not_a_list}"],
        "benchmark_babi_generator": [f"--output_dir={a_file}"],
        "evaluate": [f"--workdir={tmp_path / 'work'}", f"--out_dir={a_file}"],
    }
    flag = {"benchmark_babi_generator": "--output_dir", "evaluate": "--out_dir"}
    procs = {name: subprocess.Popen([sys.executable, "-m", f"launch.{name}", *args], cwd=REPO,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, args in runs.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        last = err.strip().splitlines()[-1] if err.strip() else ""
        assert proc.returncode != 0 and last.startswith("error: "), (name, err[-2000:])
        assert flag.get(name, "--out") + "=" in last, (name, last)
        assert out == "", (name, out)
    assert a_file.read_text() == "x" and not_a_list.read_text() == '{"a": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_folder", "records.json"]


# -- inputs checked before the first dataset is built --------------------------------------
def test_manual_dir_without_babi_is_an_error_not_a_download(tmp_path, small_haystack_dir,
                                                           gpt2_dir, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the build went to the network")

    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", no_network)
    monkeypatch.setattr(tfds.download.DownloadManager, "download", no_network)
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "haystack").symlink_to(small_haystack_dir)
    (manual / "gpt2_tokenizer").symlink_to(gpt2_dir)
    with pytest.raises(FileNotFoundError, match=r"manual dir .*manual has no babi/ \(the bAbI"):
        build("qa1", "1k", data_dir=tmp_path / "d", manual_dir=manual,
              options=BuildOptions(num_samples=2))
    (manual / "haystack").unlink()
    (manual / "babi").mkdir()
    with pytest.raises(FileNotFoundError, match=r"has no haystack/ \(book text"):
        build("qa1", "0k,1k", data_dir=tmp_path / "d", manual_dir=manual,
              options=BuildOptions(num_samples=2))
    assert not (tmp_path / "d").exists()


def test_a_length_too_long_for_the_haystack_fails_before_the_shorter_ones(tmp_path,
                                                                          manual_dir):
    with pytest.raises(ValueError, match=r"length 10M needs at least .* holds .*--allow_reuse"):
        build("qa1", "0k,1k,10M", data_dir=tmp_path / "d", manual_dir=manual_dir,
              options=BuildOptions(num_samples=2))
    assert not (tmp_path / "d").exists()


def test_a_data_dir_that_is_a_file_is_an_error_line(tmp_path, manual_dir):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match=r"--data_dir=.*file is a file, not a folder"):
        build("qa1", "0k", data_dir=a_file / "sub", manual_dir=manual_dir)
    with pytest.raises(ValueError, match=r"--jsonl_dir=.*file is a file, not a folder"):
        build("qa1", "0k", data_dir=tmp_path / "d", jsonl_dir=a_file, manual_dir=manual_dir)
    assert not (tmp_path / "d").exists()
    done = subprocess.run([sys.executable, "-m", "launch.build_babilong", f"--data_dir={a_file}",
                           f"--manual_dir={manual_dir}"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.strip().splitlines()[-1].startswith("error: --data_dir="), done.stderr
    assert a_file.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only folders")
def test_a_read_only_data_dir_is_an_error(tmp_path, manual_dir):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        with pytest.raises(ValueError, match=r"cannot write in .*fix its permissions"):
            build("qa1", "0k", data_dir=tmp_path / "ro" / "d", manual_dir=manual_dir)
    finally:
        (tmp_path / "ro").chmod(0o755)


# -- leftovers of interrupted builds --------------------------------------------------------
def _dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def test_leftovers_of_killed_builds_are_removed_and_only_those(tmp_path, manual_dir):
    """A killed build leaves TFDS's `incomplete.XXXXXX_2.0.0` folder and the export's
    `.0k.jsonl.*.tmp`; the next run of the same build removes them. It keeps what may belong
    to a running process: another version's folder, a temporary file of a live pid, an
    unnamed one written within the hour."""
    options = BuildOptions(num_samples=2)
    config_dir = tmp_path / "d" / "babilong" / options.config("qa1", "0k").name
    ours = config_dir / "incomplete.AB12CD_2.0.0"
    ours.mkdir(parents=True)
    (ours / "babilong-test.array_record-00000-of-00001").write_bytes(b"x" * 1000)
    kept = [config_dir / "incomplete.AB12CD_1.0.0", config_dir / "incomplete.notours"]
    for path in kept:
        path.mkdir()
    out = tmp_path / "jsonl" / "qa1"
    out.mkdir(parents=True)
    dead = out / f".0k.jsonl.{_dead_pid()}.0123abcd.tmp"
    live = out / f".0k.jsonl.{os.getpid()}.0123abcd.tmp"
    old_unnamed = out / ".0k.jsonl.k2j_9x0a.tmp"
    new_unnamed = out / ".0k.jsonl.zz81_q2b.tmp"
    other_file = out / ".0k.jsonl.x.tmp"
    for path in (dead, live, old_unnamed, new_unnamed, other_file):
        path.write_text("partial")
    os.utime(old_unnamed, (time.time() - 7200, time.time() - 7200))
    build("qa1", "0k", data_dir=tmp_path / "d", manual_dir=manual_dir,
          jsonl_dir=tmp_path / "jsonl", options=options)
    assert sorted(p.name for p in config_dir.iterdir()) == sorted(
        ["2.0.0", *(p.name for p in kept)])
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["0k.jsonl", live.name, new_unnamed.name, other_file.name])


def test_one_build_of_a_config_at_a_time(tmp_path, manual_dir):
    options = BuildOptions(num_samples=2)
    config_dir = tmp_path / "d" / "babilong" / options.config("qa1", "0k").name
    with builder_lib.build_lock(config_dir):
        with pytest.raises(ValueError, match=rf"another process \(pid {os.getpid()}\) is "
                                             r"building into .*another data_dir"):
            build("qa1", "0k", data_dir=tmp_path / "d", manual_dir=manual_dir, options=options)
        assert not (config_dir / "2.0.0").exists()
    assert not (config_dir / builder_lib.LOCK_NAME).exists()
    build("qa1", "0k", data_dir=tmp_path / "d", manual_dir=manual_dir, options=options)
    assert sorted(p.name for p in config_dir.iterdir()) == ["2.0.0"]
