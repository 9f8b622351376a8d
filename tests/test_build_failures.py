"""Builds that failed, or failed late, for reasons other than bad sample options (issue 11):
large splits without TensorFlow, damaged caches, bad folders, leftovers of interrupted builds."""

import importlib.util
import sys

import pytest
import tensorflow_datasets as tfds

from babilong_tfds.babilong import babilong_dataset_builder as builder_lib
from babilong_tfds.build import BuildOptions, build

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
