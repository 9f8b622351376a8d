"""The TFDS builder and the build script: builds, reads back, reproducibility, bad input."""

import importlib.util
import json
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

from babilong_tfds import babi_solver
from babilong_tfds import dataset as dataset_lib
from babilong_tfds.babilong import BabilongConfig, Builder
from babilong_tfds.build import BuildOptions, build
from babilong_tfds.tasks import LENGTHS, TASKS

from .conftest import REPO


def test_configs_cover_every_task_and_length():
    names = {c.name for c in Builder.BUILDER_CONFIGS}
    assert len(names) == len(TASKS) * len(LENGTHS) == 20 * 14
    assert {"qa1_0k", "qa20_10M", "qa5_2M"} <= names
    assert Builder.VERSION and Builder.RELEASE_NOTES


def build_small(tmp_path, manual_dir, tag, **options):
    opts = BuildOptions(num_samples=5, **options)
    return build(
        "qa1,qa2",
        "0k,2k",
        data_dir=tmp_path / tag,
        manual_dir=manual_dir,
        jsonl_dir=tmp_path / f"{tag}_jsonl",
        options=opts,
    )


def test_build_read_back_and_export(tmp_path, manual_dir):
    results = build_small(tmp_path, manual_dir, "a")
    assert [(r.task, r.length, r.samples) for r in results] == [
        ("qa1", "0k", 5),
        ("qa1", "2k", 5),
        ("qa2", "0k", 5),
        ("qa2", "2k", 5),
    ]
    source = tfds.data_source("babilong/qa2_2k_test5", split="test", data_dir=tmp_path / "a")
    record = source[0]
    assert record["task"] == b"qa2" and record["length"] == b"2k"
    assert record["num_tokens"] == 1700  # 2k = 2,000 GPT-2 tokens minus the 300 of the prompt
    lines = (tmp_path / "a_jsonl" / "qa2" / "2k.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert list(first)[:3] == ["input", "question", "target"] and len(lines) == 5
    assert [json.loads(line)["index"] for line in lines] == list(range(5))
    for fact in first["facts"]:
        assert fact in first["input"]


def test_same_seed_same_bytes_other_seed_differs(tmp_path, manual_dir):
    build_small(tmp_path, manual_dir, "a")
    build_small(tmp_path, manual_dir, "b")
    build_small(tmp_path, manual_dir, "c", seed=1)
    for task in ("qa1", "qa2"):
        for length in ("0k", "2k"):
            a = (tmp_path / "a_jsonl" / task / f"{length}.jsonl").read_bytes()
            b = (tmp_path / "b_jsonl" / task / f"{length}.jsonl").read_bytes()
            c = (tmp_path / "c_jsonl" / task / f"{length}.jsonl").read_bytes()
            assert a == b and a != c
    shard = "babilong/qa1_2k_test5/2.0.0/babilong-test.array_record-00000-of-00001"
    assert (tmp_path / "a" / shard).read_bytes() == (tmp_path / "b" / shard).read_bytes()


@pytest.mark.parametrize(
    "tasks, lengths, message",
    [
        ("qa1,qa21", "0k", "unknown task 'qa21': expected one of qa1..qa20"),
        ("qa1", "0k,3k", "unknown length '3k': expected one of 0k, 1k, 2k"),
    ],
)
def test_unknown_names_fail_before_anything_is_written(
    tmp_path, manual_dir, tasks, lengths, message
):
    with pytest.raises(ValueError, match=message):
        build(tasks, lengths, data_dir=tmp_path / "d", manual_dir=manual_dir)
    assert not (tmp_path / "d").exists()


def test_missing_babi_files_say_where(tmp_path, small_haystack_dir, gpt2_dir):
    manual = tmp_path / "manual"
    (manual / "babi").mkdir(parents=True)
    (manual / "haystack").symlink_to(small_haystack_dir)
    (manual / "gpt2_tokenizer").symlink_to(gpt2_dir)
    with pytest.raises(FileNotFoundError, match="no bAbI file qa1_single-supporting-fact_test"):
        build("qa1", "1k", data_dir=tmp_path / "d", manual_dir=manual)
    assert not list((tmp_path / "d").rglob("*.array_record*"))


def test_haystack_too_small_errors_unless_reuse(tmp_path, manual_dir):
    opts = BuildOptions(num_samples=1)
    with pytest.raises(ValueError, match="allow reuse of books explicitly"):
        build("qa1", "2M", data_dir=tmp_path / "d", manual_dir=manual_dir, options=opts)
    assert not (tmp_path / "d" / "babilong" / "qa1_2M_test1").exists()
    opts = BuildOptions(num_samples=1, allow_reuse=True)
    (result,) = build("qa1", "2M", data_dir=tmp_path / "d", manual_dir=manual_dir, options=opts)
    assert result.mean_tokens == 2_000_000 - 300


def test_interrupted_build_leaves_nothing(tmp_path, manual_dir, monkeypatch):
    real = dataset_lib.to_record
    calls = []

    def failing(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("interrupted")
        return real(*args, **kw)

    monkeypatch.setattr(dataset_lib, "to_record", failing)
    with pytest.raises(KeyboardInterrupt):
        build(
            "qa1",
            "1k",
            data_dir=tmp_path / "d",
            manual_dir=manual_dir,
            jsonl_dir=tmp_path / "j",
            options=BuildOptions(num_samples=5),
        )
    leftovers = [p for p in (tmp_path / "d").rglob("*") if "downloads" not in p.parts]
    assert not [p for p in leftovers if p.is_file() and ".config" not in p.parts]
    assert not (tmp_path / "j").exists() or not list((tmp_path / "j").rglob("*.jsonl"))


def test_config_validation():
    with pytest.raises(ValueError, match="unknown task"):
        BabilongConfig(name="x", task="qa0")
    with pytest.raises(ValueError, match="unknown babi_source"):
        BabilongConfig(name="x", babi_source="web")
    with pytest.raises(ValueError, match="at least one positive"):
        BabilongConfig(name="x", num_test=0, num_train=0)


def test_build_script_end_to_end(tmp_path, manual_dir):
    cmd = [
        sys.executable,
        "-m",
        "launch.build_babilong",
        "--tasks=qa1",
        "--lengths=0k,1k",
        "--split=test",
        "--num_samples=3",
        f"--manual_dir={manual_dir}",
        f"--data_dir={tmp_path / 'd'}",
        f"--jsonl_dir={tmp_path / 'j'}",
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "qa1" in out.stdout and "mean tokens" in out.stdout
    assert len((tmp_path / "j" / "qa1" / "1k.jsonl").read_text().splitlines()) == 3
    bad = subprocess.run(
        [*cmd[:3], "--tasks=qa99", *cmd[4:]], cwd=REPO, capture_output=True, text=True
    )
    assert bad.returncode != 0 and "unknown task 'qa99'" in bad.stderr


def test_build_with_generated_stories(tmp_path, manual_dir):
    opts = BuildOptions(num_samples=3, babi_source="generated")
    results = build(
        "qa5,qa19",
        "1k",
        data_dir=tmp_path / "d",
        manual_dir=manual_dir,
        options=opts,
        jsonl_dir=tmp_path / "j",
    )
    assert [r.config for r in results] == ["qa5_1k_test3_gen", "qa19_1k_test3_gen"]
    for line in (tmp_path / "j" / "qa19" / "1k.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert record["origin"].startswith("generated:qa19:")
        assert babi_solver.solve("qa19", record["facts"], record["question"]) == record["target"]


def test_length_too_small_for_any_story_fails_before_writing(
    tmp_path, small_haystack_dir, gpt2_dir
):
    manual = tmp_path / "manual"
    (manual / "babi").mkdir(parents=True)
    (manual / "haystack").symlink_to(small_haystack_dir)
    (manual / "gpt2_tokenizer").symlink_to(gpt2_dir)
    # One story of 90 facts: more than (1000 - 300) // 8 = 87 lines with the question.
    lines = [f"{i} Mary travelled to the garden near the old kitchen." for i in range(1, 91)]
    lines.append("91 Where is Mary? \tgarden\t90")
    (manual / "babi" / "qa1_single-supporting-fact_test.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="too small for any qa1 story.*smallest length"):
        build("qa1", "1k", data_dir=tmp_path / "d", manual_dir=manual)
    assert not list((tmp_path / "d").rglob("*.array_record*"))
    assert not (tmp_path / "d" / "babilong" / "qa1_1k").exists()


def test_without_manual_dir_the_builder_downloads(babi_root, haystack_dir, gpt2_dir, tmp_path):
    """The download path: the bAbI archive, PG19 books and the GPT-2 files come from the
    download manager."""
    listing = tmp_path / "listing.json"
    listing.write_text('{"items": [{"name": "test/11.txt"}, {"name": "test/84.txt"}]}')
    asked = []

    class FakeDownloadManager:
        @property
        def manual_dir(self):
            raise AssertionError("Manual directory not enabled.")

        def download_and_extract(self, url):
            asked.append(url)
            return babi_root

        def download(self, what):
            if isinstance(what, str):
                asked.append(what)
                return listing
            if set(what) == {"vocab.json", "merges.txt"}:
                asked.append(what["vocab.json"])
                return {name: gpt2_dir / name for name in what}
            return {name: haystack_dir / f"pg{name[5:]}" for name in what}

    config = BabilongConfig(name="qa1_1k_dl", task="qa1", length="1k", num_test=2, num_train=0)
    builder = Builder(config=config, data_dir=tmp_path / "d")
    shards = builder._shard_iterators_per_split(FakeDownloadManager())
    records = [r for shard in shards["test"] for _, r in shard()]
    assert len(records) == 2 and set(records[0]["book_ids"]) <= {"11", "84"}
    assert "huggingface.co" in asked[0] and asked[0].endswith("gpt2/resolve/main/vocab.json")
    assert asked[1].endswith("tasks_1-20_v1-2.tar.gz") and "deepmind-gutenberg" in asked[2]


# -- array_record by default, same bytes in every process, Apache Beam ---------------------
def split_records(data_dir, name, split="test"):
    """Every record of a built split, as stored (serialized bytes), in order."""
    from array_record.python.array_record_module import ArrayRecordReader

    (version_dir,) = (data_dir / "babilong" / name).iterdir()
    shards = sorted(version_dir.glob(f"babilong-{split}.array_record-*"))
    assert shards, f"no array_record shard of {split} in {version_dir}"
    records = []
    for shard in shards:
        reader = ArrayRecordReader(str(shard))
        records += reader.read_all()
        reader.close()
    return records


def test_a_build_without_a_file_format_writes_array_record(tmp_path, manual_dir):
    """`tfds build` passes no file format: the builder still writes what data_source reads."""
    config = BuildOptions(num_samples=3).config("qa1", "0k")
    builder = Builder(config=config, data_dir=tmp_path)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    assert builder.info.file_format.value == "array_record"
    source = tfds.data_source(f"babilong/{config.name}", split="test", data_dir=tmp_path)
    assert [int(source[i]["index"]) for i in range(len(source))] == [0, 1, 2]
    assert not list(tmp_path.rglob("*.tfrecord*"))


def test_same_bytes_in_another_process(tmp_path, manual_dir):
    """Protobuf orders a record's feature map by a per-process hash seed; the builder sorts
    it, so two processes write the same bytes."""
    options = BuildOptions(num_samples=3)
    build("qa2", "1k", data_dir=tmp_path / "here", manual_dir=manual_dir, options=options)
    code = (
        "import sys\n"
        "from babilong_tfds.build import BuildOptions, build\n"
        "build('qa2', '1k', data_dir=sys.argv[1], manual_dir=sys.argv[2],"
        " options=BuildOptions(num_samples=3))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "there"), str(manual_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    name = options.config("qa2", "1k").name
    here = split_records(tmp_path / "here", name)
    assert len(here) == 3 and here == split_records(tmp_path / "there", name)


@pytest.mark.parametrize("task, length, split", [("qa3", "1k", "all"), ("qa1", "0k", "test")])
def test_beam_build_equals_single_process_build(tmp_path, manual_dir, task, length, split,
                                                monkeypatch):
    """The Beam build (DirectRunner, two worker processes, a shard per work item) writes
    every record of every split byte for byte as the single-process build does."""
    pytest.importorskip(
        "apache_beam", reason="apache_beam is not installed (pip install -e '.[beam]')"
    )
    from apache_beam.options.pipeline_options import PipelineOptions

    from babilong_tfds.babilong import babilong_dataset_builder

    # Shards of four samples (two of them, the last one partial) in both builds.
    monkeypatch.setattr(babilong_dataset_builder, "SHARD_TOKENS", 4000)
    num_samples = 6
    config = BuildOptions(split=split, num_samples=num_samples).config(task, length)
    for tag, beam_options in [
        ("single", {}),
        (
            "beam",
            {
                "beam_runner": "DirectRunner",
                "beam_options": PipelineOptions(
                    ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
                ),
            },
        ),
    ]:
        Builder(config=config, data_dir=tmp_path / tag).download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, **beam_options)
        )
    for name in ("test", "train") if split == "all" else (split,):
        single = split_records(tmp_path / "single", config.name, name)
        assert len(single) == num_samples
        assert split_records(tmp_path / "beam", config.name, name) == single


def test_beam_options_without_apache_beam_are_refused(tmp_path, manual_dir):
    if importlib.util.find_spec("apache_beam") is not None:
        pytest.skip("apache_beam is installed: the Beam build runs instead")
    config = BuildOptions(num_samples=2).config("qa1", "0k")
    with pytest.raises(ValueError, match=r"apache_beam is not installed: pip install"):
        Builder(config=config, data_dir=tmp_path).download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=manual_dir, beam_runner="DirectRunner"
            )
        )
    assert not list(tmp_path.rglob("*.array_record*"))


def test_beam_with_the_builder_loaded_from_its_folder_is_refused(tmp_path, manual_dir, monkeypatch):
    """`tfds build babilong_tfds/babilong` imports the builder as `babilong.*`, which Beam's
    workers cannot import: the build says how to name the module instead."""
    monkeypatch.setattr(Builder, "__module__", "babilong.babilong_dataset_builder")
    config = BuildOptions(num_samples=2).config("qa1", "0k")
    with pytest.raises(ValueError, match=r"--imports=babilong_tfds.babilong"):
        Builder(config=config, data_dir=tmp_path).download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=manual_dir, beam_runner="DirectRunner"
            )
        )
    assert not list(tmp_path.rglob("*.array_record*"))


def test_build_with_beam_options(tmp_path, manual_dir):
    """build(beam_options=...) (launch.build_babilong --beam_pipeline_options): the same bytes
    as without; without apache_beam, an error before anything is written."""
    options = BuildOptions(num_samples=3)
    beam_options = "direct_num_workers=2,direct_running_mode=multi_processing"
    if importlib.util.find_spec("apache_beam") is None:
        with pytest.raises(ValueError, match=r"need apache_beam: pip install -e '.\[beam\]'"):
            build(
                "qa1",
                "1k",
                data_dir=tmp_path / "beam",
                manual_dir=manual_dir,
                options=options,
                beam_options=beam_options,
            )
        assert not (tmp_path / "beam").exists()
        return
    for tag, beam in (("single", None), ("beam", beam_options)):
        build(
            "qa1",
            "1k",
            data_dir=tmp_path / tag,
            manual_dir=manual_dir,
            options=options,
            beam_options=beam,
        )
    name = options.config("qa1", "1k").name
    assert split_records(tmp_path / "beam", name) == split_records(tmp_path / "single", name)


# -- the official defaults, the legacy options, what the metadata records ------------------
def test_config_names_carry_a_suffix_per_non_default_option():
    assert BuildOptions().config("qa1", "1k").name == "qa1_1k"
    assert BuildOptions(tokenizer="gpt2:/d").config("qa1", "1k").name == "qa1_1k_gpt2dir"
    assert BuildOptions(splitter="blingfire").config("qa1", "1k").name == "qa1_1k_blingfire"
    assert BuildOptions(story_filter="tokens").config("qa1", "1k").name == "qa1_1k_tokfilter"
    legacy = BuildOptions.legacy(num_samples=3).config("qa1", "1k")
    assert legacy.name == "qa1_1k_test3_sp_blingfire_pow2_tokfilter_whole"
    assert (legacy.tokenizer, legacy.length_table, legacy.fill) == (
        "sentencepiece", "pow2", "whole_sentences")
    with pytest.raises(ValueError, match="unknown fill 'sentences'"):
        BuildOptions(fill="sentences")
    with pytest.raises(ValueError, match="unknown splitter"):
        BuildOptions(splitter="nltk")


def test_legacy_options_build_the_old_samples_and_metadata_says_how(tmp_path, manual_dir):
    (new,) = build("qa1", "1k", data_dir=tmp_path, manual_dir=manual_dir,
                   options=BuildOptions(num_samples=3))
    (old,) = build("qa1", "1k", data_dir=tmp_path, manual_dir=manual_dir,
                   options=BuildOptions.legacy(num_samples=3))
    assert new.mean_tokens == 700
    assert 1024 - 300 - 20 <= old.mean_tokens <= 1024 - 300  # whole sentences, pow2 lengths
    info = {}
    for result in (new, old):
        (version_dir,) = (tmp_path / "babilong" / result.config).iterdir()
        assert version_dir.name == "2.0.0"
        info[result.config] = json.loads((version_dir / "metadata.json").read_text())
    meta = info["qa1_1k_test3"]
    assert meta["tokenizer"] == "gpt2" and meta["tokenizer_name"] == "gpt2_bpe"
    assert meta["splitter"].startswith("punkt") and meta["splitter_library"].startswith("nltk")
    assert meta["length_tokens"] == 1000 and meta["fill"] == "exact"
    assert "booydar/babilong" in meta["generator"] and len(meta["tokenizer_fingerprint"]) == 64
    legacy = info[old.config]
    assert legacy["splitter"].startswith("blingfire") and legacy["length_tokens"] == 1024
    assert legacy["tokenizer_name"].startswith("sentencepiece")
    source = tfds.data_source(f"babilong/{old.config}", split="test", data_dir=tmp_path)
    assert "\n" not in source[0]["input"].decode()  # Blingfire unwraps the lines


def test_build_script_flags_name_the_options(tmp_path, manual_dir):
    cmd = [sys.executable, "-m", "launch.build_babilong", "--tasks=qa1", "--lengths=1k",
           "--num_samples=2", f"--manual_dir={manual_dir}", f"--data_dir={tmp_path / 'd'}",
           "--legacy", "--tokenizer=gpt2"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "d" / "babilong" / "qa1_1k_test2_blingfire_pow2_tokfilter_whole").is_dir()
    bad = subprocess.run([*cmd[:-2], "--fill=half"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode != 0 and "half" in bad.stderr
