r"""Builds BABILong TFDS datasets (array_record) and optionally exports JSONL.

    python -m launch.build_babilong --tasks=qa1,qa2 --lengths=0k,4k --split=test \
        --num_samples=100 --seed=0 --manual_dir=../shared/data --data_dir=/tmp/babilong \
        --jsonl_dir=/tmp/babilong_jsonl

Writes `{data_dir}/babilong/{config}/2.0.0/` per task and length, read back with
`tfds.data_source("babilong/{config}", split=..., data_dir=...)`, and with `--jsonl_dir`
`{jsonl_dir}/{task}/{length}.jsonl` (`{length}_train.jsonl` for the train split).
With `--hf_dir`, the built split is also written in the Hugging Face layout of the published
`RMT-team/babilong` sets (`datasets.load_dataset(HF_DIR, "1k", split="qa1")`); with `--data`
(a JSONL export, such a folder, or `hf:RMT-team/babilong`) nothing is built and those samples
are copied into `--hf_dir`.

The defaults make what the official generator makes (GPT-2 BPE lengths, 1k = 1,000 tokens,
exact budgets, the line filter, Punkt sentences); GPT-2's vocab.json and merges.txt are read
from `--manual_dir` (or its `gpt2_tokenizer/`), `--tokenizer=gpt2:DIR`, or the Hugging Face
hub. `--legacy` (or the single options) makes the project's samples before version 2.0.0:

    python -m launch.build_babilong --tasks=qa1 --lengths=1k --legacy \
        --manual_dir=../shared/data --data_dir=/tmp/babilong

Every length builds without TensorFlow, 10M included (records are written shard by shard;
the 35 offline books need `--allow_reuse` there). Before the first dataset is built, the
folders (a --data_dir or --jsonl_dir that is a file or unwritable), the manual dir (babi/,
and haystack/ above 0k: nothing is downloaded for a manual dir) and the haystack's size at
every length are checked: each problem is an `error:` line. A killed build's leftovers
(TFDS's `incomplete.*` folder, a `.{length}.jsonl.{pid}.*.tmp` file) are removed by the next
run of the same build; one process builds a config into a data dir at a time.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from tqdm import tqdm

from babilong_tfds.build import BuildOptions, build, export_hf_dir, format_table
from babilong_tfds.published import check_hf_dir, load_samples, write_hf_dir
from babilong_tfds.tasks import parse_lengths, parse_tasks

_TASKS = flags.DEFINE_string("tasks", "qa1", "Comma-separated qa1..qa20, or 'all'.")
_LENGTHS = flags.DEFINE_string("lengths", "0k", "Comma-separated 0k,1k,...,10M, or 'all'.")
_SPLIT = flags.DEFINE_enum("split", "test", ["test", "train", "all"], "Which splits to build.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 100, "Samples per split.")
_SEED = flags.DEFINE_integer("seed", 0, "Every record depends on the seed and its index.")
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Folder with babi/ and haystack/ (e.g. ../shared/data); else download."
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where the TFDS datasets go (required).")
_JSONL_DIR = flags.DEFINE_string("jsonl_dir", None, "Also export {task}/{length}.jsonl here.")
_HF_DIR = flags.DEFINE_string(
    "hf_dir", None, "Also write the built split in the Hugging Face layout of RMT-team/babilong "
    "(config per length, split per task, README configs) here.")
_BEAM_OPTIONS = flags.DEFINE_string(
    "beam_pipeline_options", None, "Make the records with Apache Beam (the [beam] extra), e.g. "
    "'direct_num_workers=8,direct_running_mode=multi_processing': same bytes, many workers.")
_DATA = flags.DEFINE_string(
    "data", None, "Build nothing: copy the tasks and lengths of these published samples (a JSONL "
    "export folder, a Hugging Face layout folder or hf:RMT-team/babilong) into --hf_dir.")
_BABI_SOURCE = flags.DEFINE_enum(
    "babi_source", "files", ["files", "generated"], "Original bAbI files or the simulator."
)
_TOKENIZER = flags.DEFINE_string(
    "tokenizer", None,
    "'gpt2' (default: files under --manual_dir, else the hub), 'gpt2:DIR', or the legacy "
    "'sentencepiece' / 'sentencepiece:MODEL'.",
)
_SPLITTER = flags.DEFINE_enum("splitter", None, ["punkt", "blingfire"],
                              "Background sentences: 'punkt' (default) or legacy 'blingfire'.")
_LENGTH_TABLE = flags.DEFINE_enum("length_table", None, ["official", "pow2"],
                                  "'official' (1k = 1,000 tokens, default) or legacy 'pow2'.")
_STORY_FILTER = flags.DEFINE_enum(
    "story_filter", None, ["lines", "tokens"],
    "'lines' (fact lines + question <= (L-300)//8, default) or legacy 'tokens' (<= L/8).")
_FILL = flags.DEFINE_enum(
    "fill", None, ["exact", "whole_sentences"],
    "'exact' (L-300 tokens, last sentence cut; default) or legacy 'whole_sentences'.")
_LEGACY = flags.DEFINE_bool(
    "legacy", False, "Every legacy option (sentencepiece, blingfire, pow2, tokens, "
    "whole_sentences); single flags given with it override it.")
_ALLOW_REUSE = flags.DEFINE_bool(
    "allow_reuse", False, "Let one sample use a book twice when the haystack is too small."
)
_WINDOW = flags.DEFINE_list("window", ["0", "1"], "Facts confined to [start,end] of the context.")
_DEPTHS = flags.DEFINE_list("depths", [], "Needle sweep: e.g. 0,0.1,...,1 (every sample at each).")


def main(argv):
    del argv
    try:
        tasks = parse_tasks(_TASKS.value)
        lengths = parse_lengths(_LENGTHS.value)
        recipe = {
            name: flag.value
            for name, flag in (("tokenizer", _TOKENIZER), ("splitter", _SPLITTER),
                               ("length_table", _LENGTH_TABLE), ("story_filter", _STORY_FILTER),
                               ("fill", _FILL))
            if flag.value is not None
        }
        make = BuildOptions.legacy if _LEGACY.value else BuildOptions
        options = make(
            split=_SPLIT.value,
            num_samples=_NUM_SAMPLES.value,
            seed=_SEED.value,
            babi_source=_BABI_SOURCE.value,
            allow_reuse=_ALLOW_REUSE.value,
            window=tuple(float(x) for x in _WINDOW.value),
            depths=tuple(float(x) for x in _DEPTHS.value),
            **recipe,
        )
    except ValueError as e:
        sys.exit(f"error: {e}")
    if _DATA.value is not None:
        copy_published(_DATA.value, tasks, lengths, _HF_DIR.value)
        return
    if _DATA_DIR.value is None:
        sys.exit("error: --data_dir is required: the folder the TFDS datasets go to")
    if _HF_DIR.value is not None:
        try:
            check_hf_dir(_HF_DIR.value)
        except ValueError as e:
            sys.exit(f"error: {e}")
        if options.split == "all":
            sys.exit("error: --hf_dir holds one split per task and config: build --split=test "
                     "(or --split=train) for it")
    try:
        with tqdm(total=len(tasks) * len(lengths), desc="babilong", unit="dataset") as bar:
            results = build(
                tasks,
                lengths,
                data_dir=_DATA_DIR.value,
                manual_dir=_MANUAL_DIR.value,
                jsonl_dir=_JSONL_DIR.value,
                options=options,
                progress=bar,
                beam_options=_BEAM_OPTIONS.value,
            )
    except (ValueError, FileNotFoundError) as e:
        # Bad input (unknown names, missing or malformed files, too small a haystack):
        # nothing of the failed dataset was written.
        sys.exit(f"error: {e}")
    print(format_table(results))
    logging.info("built %d datasets under %s", len(results), _DATA_DIR.value)
    if _HF_DIR.value is not None:
        files = export_hf_dir(results, data_dir=_DATA_DIR.value, hf_dir=_HF_DIR.value)
        print(f"wrote {len(files)} splits in the Hugging Face layout to {_HF_DIR.value}")


def copy_published(data: str, tasks, lengths, hf_dir: str | None) -> None:
    """--data: the published samples of every task and length, written to --hf_dir."""
    if hf_dir is None:
        sys.exit("error: --data is copied into --hf_dir: pass --hf_dir=DIR")
    try:
        check_hf_dir(hf_dir)
        samples = {(t, n): load_samples(data, t, n) for t in tasks for n in lengths}
        files = write_hf_dir(hf_dir, samples)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {len(files)} splits from {data} in the Hugging Face layout to {hf_dir}")


if __name__ == "__main__":
    app.run(main)
