r"""Benchmark of BABILong generation: single long samples, the published test set, and the
official generator beside them.

    python -m launch.benchmark_babilong --manual_dir=../shared/data \
        --out=results/benchmark_babilong.json \
        --official_python=/tmp/venv_official/bin/python --official_repo=/tmp/babilong

Measures, after the haystack is loaded (its load or build time is reported apart), with the
default (official) recipe unless `--legacy`:
  * one 1M-token and one 10M-token qa1 sample: compose + token ids, and compose + text +
    token ids; median of `--repeats`; peak RSS after the 10M sample;
  * the whole published test set, `--tasks` x `--lengths` x `--num_samples` (qa1..qa10 x
    0k..1M x 100, about 2 billion tokens), made through `generate_split` as token ids (the
    composer's tokens: what evaluation reads; no text, no TFDS writing);
  * optionally (`--split_lengths`) the qa1 test splits of those lengths built end to end as
    TFDS array_record datasets (text, written to disk);
  * optionally (`--official_python` and `--official_repo`) one 1M qa1 sample of the official
    `babilong_utils.py`, run by `launch/official_generator_timing.py` in that Python (it needs
    the reference's dependencies); its command and output go into the JSON.
Prints a table and writes one JSON file. The 10M sample reuses books (the 35 offline books
hold about 7.8M GPT-2 tokens).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import app, flags

from babilong_tfds.babi import load_babi
from babilong_tfds.build import BuildOptions, build
from babilong_tfds.compose import LEGACY_RECIPE, Composer, Recipe
from babilong_tfds.dataset import StoryPool, generate_split
from babilong_tfds.haystack import Haystack, load_books_from_dir
from babilong_tfds.tasks import LENGTHS, parse_lengths, parse_tasks
from babilong_tfds.tokenizer import get_tokenizer
from launch.outputs import check_output_file
from rmt_jax.files import write_text

_MANUAL_DIR = flags.DEFINE_string("manual_dir", "../shared/data", "Folder with babi/, haystack/.")
_LEGACY = flags.DEFINE_bool("legacy", False, "The legacy options (sentencepiece, blingfire, ...).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats of each single sample.")
_TASKS = flags.DEFINE_string("tasks", "qa1,qa2,qa3,qa4,qa5,qa6,qa7,qa8,qa9,qa10",
                             "Tasks of the test set ('' to skip it).")
_LENGTHS = flags.DEFINE_string("lengths", "0k,1k,2k,4k,8k,16k,32k,64k,128k,256k,512k,1M",
                               "Lengths of the test set.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 100, "Samples per task and length.")
_SPLIT_LENGTHS = flags.DEFINE_string(
    "split_lengths", "", "Lengths of qa1 test splits to build as TFDS datasets ('' to skip)."
)
_OFFICIAL_PYTHON = flags.DEFINE_string(
    "official_python", None, "A Python with the reference's dependencies (transformers<5, "
    "pandas, nltk) to time the official generator with.")
_OFFICIAL_REPO = flags.DEFINE_string(
    "official_repo", None, "A checkout of booydar/babilong (its babilong/babilong_utils.py).")
_OUT = flags.DEFINE_string("out", "results/benchmark_babilong.json", "JSON output path.")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def time_sample(composer: Composer, sample, length: str, repeats: int) -> dict:
    ids_times, text_times, tokens = [], [], 0
    for r in range(repeats):
        start = time.perf_counter()
        composition = composer.compose(sample, length, np.random.default_rng(r))
        ids = composition.token_ids(composer.haystack)
        ids_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        composition = composer.compose(sample, length, np.random.default_rng(r))
        text = composition.text(composer.haystack)
        ids = composition.token_ids(composer.haystack)
        text_times.append(time.perf_counter() - start)
        tokens = composition.num_tokens
        assert len(ids) == tokens and len(text) > tokens
    return {
        "length": length,
        "tokens": tokens,
        "seconds": statistics.median(ids_times),
        "seconds_with_text": statistics.median(text_times),
        "tokens_per_s": tokens / statistics.median(ids_times),
    }


def time_test_set(composer: Composer, tasks, lengths, num_samples: int, babi_root,
                  with_text: bool) -> dict:
    """Every record of the test set, as `generate_split` makes them: the composer's token ids,
    or (`with_text`) the `input` text that the TFDS splits and JSONL exports store."""
    per_length = dict.fromkeys(lengths, 0.0)
    tokens = chars = 0
    start = time.perf_counter()
    for task in tasks:
        pool = StoryPool(task, "test", babi_root=babi_root)
        for length in lengths:
            t0 = time.perf_counter()
            for _, record in generate_split(composer, task, length, "test", num_samples,
                                            pool=pool, with_text=with_text, with_ids=True):
                tokens += len(record["input_ids"])
                chars += len(record["input"]) if with_text else 0
            per_length[length] += time.perf_counter() - t0
    seconds = time.perf_counter() - start
    return {"tasks": list(tasks), "lengths": list(lengths), "samples_each": num_samples,
            "what": f"generate_split(with_text={with_text}, with_ids=True)",
            "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
            "text_chars": chars, "per_length_s": per_length}


def time_official(python: str, repo: str, manual: Path) -> dict:
    script = Path(__file__).resolve().parent / "official_generator_timing.py"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "official.json"
        cmd = [python, str(script), f"--babilong_repo={repo}", f"--manual_dir={manual}",
               "--length=1000000", "--samples=3", f"--out={out}"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"the official generator failed: {done.stderr[-2000:]}")
        report = json.loads(out.read_text())
    report["command"] = " ".join(cmd[:-1])
    report["median_sample_s"] = statistics.median(r["sample_s"] for r in report["runs"])
    return report


def main(argv):
    del argv
    manual = Path(_MANUAL_DIR.value)
    tasks = parse_tasks(_TASKS.value) if _TASKS.value else []
    lengths = parse_lengths(_LENGTHS.value)
    if bool(_OFFICIAL_PYTHON.value) != bool(_OFFICIAL_REPO.value):
        sys.exit("error: --official_python and --official_repo go together")
    try:
        check_output_file(_OUT.value)
    except ValueError as e:
        sys.exit(f"error: {e}")
    legacy = _LEGACY.value
    recipe: Recipe = LEGACY_RECIPE if legacy else Recipe()
    tokenizer = get_tokenizer("sentencepiece" if legacy else "gpt2", search_dirs=[manual])
    start = time.perf_counter()
    books = load_books_from_dir(manual / "haystack")
    haystack = Haystack.build(books, tokenizer, splitter="blingfire" if legacy else "punkt")
    load_s = time.perf_counter() - start
    sample = load_babi("qa1", "test", manual / "babi")[0]
    composer = Composer(haystack, tokenizer, recipe=recipe,
                        allow_reuse=haystack.num_tokens < LENGTHS["10M"])
    composer.compose(sample, "1k", np.random.default_rng(0))  # warm the fact cache

    singles = [time_sample(composer, sample, length, _REPEATS.value) for length in ("1M", "10M")]
    rss_after_10m = peak_rss_gb()
    test_set = test_set_text = None
    if tasks:
        test_set, test_set_text = (
            time_test_set(Composer(haystack, tokenizer, recipe=recipe), tasks, lengths,
                          _NUM_SAMPLES.value, manual / "babi", with_text=with_text)
            for with_text in (False, True))

    split = None
    split_lengths = parse_lengths(_SPLIT_LENGTHS.value) if _SPLIT_LENGTHS.value else []
    if split_lengths:
        options = BuildOptions.legacy(num_samples=_NUM_SAMPLES.value) if legacy else (
            BuildOptions(num_samples=_NUM_SAMPLES.value))
        with tempfile.TemporaryDirectory() as data_dir:
            start = time.perf_counter()
            results = build("qa1", split_lengths, data_dir=data_dir, manual_dir=manual,
                            options=options)
            seconds = time.perf_counter() - start
        total = sum(r.mean_tokens * r.samples for r in results)
        split = {"lengths": split_lengths, "samples_each": _NUM_SAMPLES.value,
                 "seconds": seconds, "tokens": total, "tokens_per_s": total / seconds,
                 "per_length_s": {r.length: r.seconds for r in results}}
    official = None
    if _OFFICIAL_PYTHON.value:
        official = time_official(_OFFICIAL_PYTHON.value, _OFFICIAL_REPO.value, manual)

    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "command": " ".join(sys.argv),
        "tokenizer": tokenizer.name,
        "splitter": haystack.splitter,
        "recipe": {"lengths": recipe.lengths, "story_filter": recipe.story_filter,
                   "fill": recipe.fill},
        "haystack": {"books": len(haystack.book_ids), "sentences": haystack.num_sentences,
                     "tokens": haystack.num_tokens, "load_s": load_s},
        "single_samples": singles,
        "peak_rss_gb_after_10M": rss_after_10m,
        "test_set": test_set,
        "test_set_with_text": test_set_text,
        "qa1_test_splits_tfds": split,
        "official_generator": official,
    }
    print(f"haystack: {len(haystack.book_ids)} books, {haystack.num_tokens:,} tokens, "
          f"loaded in {load_s:.1f} s ({tokenizer.name}, {haystack.splitter})")
    print(f"{'what':<36}{'tokens':>15}{'seconds':>10}{'tokens/s':>14}")
    for s in singles:
        print(f"{'one qa1 sample ' + s['length'] + ' (ids)':<36}{s['tokens']:>15,}"
              f"{s['seconds']:>10.3f}{s['tokens_per_s']:>14,.0f}")
        print(f"{'  same, with text':<36}{s['tokens']:>15,}{s['seconds_with_text']:>10.3f}")
    if test_set:
        what = (f"test set {len(tasks)} tasks x {lengths[0]}..{lengths[-1]} "
                f"x{_NUM_SAMPLES.value}")
        print(f"{what:<36}{test_set['tokens']:>15,}{test_set['seconds']:>10.1f}"
              f"{test_set['tokens_per_s']:>14,.0f}")
        print(f"{'  same, with text':<36}{test_set_text['tokens']:>15,}"
              f"{test_set_text['seconds']:>10.1f}{test_set_text['tokens_per_s']:>14,.0f}")
    if split:
        what = f"qa1 TFDS {split_lengths[0]}..{split_lengths[-1]} x{_NUM_SAMPLES.value}"
        print(f"{what:<36}{split['tokens']:>15,.0f}{split['seconds']:>10.1f}"
              f"{split['tokens_per_s']:>14,.0f}")
    if official:
        print(f"{'official generator, one 1M sample':<36}{official['runs'][0]['tokens']:>15,}"
              f"{official['median_sample_s']:>10.3f}")
    print(f"peak RSS after the 10M sample: {rss_after_10m:.2f} GB")
    out = Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
