r"""Benchmark of BABILong generation: single long samples, then whole test splits.

    python -m launch.benchmark_babilong --manual_dir=../shared/data \
        --out=results/benchmark_babilong.json

Measures, after the haystack is loaded (its load time is reported apart):
  * one 1M-token and one 10M-token qa1 sample (compose + text + token ids), median of
    `--repeats`, and the process's peak RSS after the 10M sample;
  * building the qa1 test splits of `--split_lengths` (`--num_samples` each) as TFDS
    array_record datasets, end to end.
Prints a table and writes one JSON file. Books are reused within a sample only where the
haystack is smaller than the length (10M on the 35 offline books).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import app, flags

from babilong_tfds.babi import load_babi
from babilong_tfds.build import BuildOptions, build
from babilong_tfds.compose import Composer
from babilong_tfds.haystack import Haystack, load_books_from_dir
from babilong_tfds.tasks import LENGTHS, parse_lengths
from babilong_tfds.tokenizer import get_tokenizer

_MANUAL_DIR = flags.DEFINE_string("manual_dir", "../shared/data", "Folder with babi/, haystack/.")
_TOKENIZER = flags.DEFINE_string("tokenizer", "sentencepiece", "What lengths are counted in.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats of each single sample.")
_SPLIT_LENGTHS = flags.DEFINE_string(
    "split_lengths",
    "0k,1k,2k,4k,8k,16k,32k,64k,128k,256k,512k,1M",
    "Lengths of the qa1 test splits to build ('' to skip).",
)
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 100, "Samples per test split.")
_OUT = flags.DEFINE_string("out", "results/benchmark_babilong.json", "JSON output path.")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def time_sample(composer: Composer, sample, length: str, repeats: int) -> dict:
    times, tokens = [], 0
    for r in range(repeats):
        start = time.perf_counter()
        composition = composer.compose(sample, length, np.random.default_rng(r))
        text = composition.text(composer.haystack)
        ids = composition.token_ids(composer.haystack)
        times.append(time.perf_counter() - start)
        tokens = composition.num_tokens
        assert len(ids) == tokens and len(text) > tokens
    seconds = statistics.median(times)
    return {
        "length": length,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
    }


def main(argv):
    del argv
    manual = Path(_MANUAL_DIR.value)
    tokenizer = get_tokenizer(_TOKENIZER.value)
    start = time.perf_counter()
    books = load_books_from_dir(manual / "haystack")
    haystack = Haystack.build(books, tokenizer)
    load_s = time.perf_counter() - start
    sample = load_babi("qa1", "test", manual / "babi")[0]
    composer = Composer(haystack, tokenizer, allow_reuse=haystack.num_tokens < LENGTHS["10M"])
    composer.compose(sample, "1k", np.random.default_rng(0))  # warm the fact cache

    singles = [time_sample(composer, sample, length, _REPEATS.value) for length in ("1M", "10M")]
    rss_after_10m = peak_rss_gb()

    split = None
    lengths = parse_lengths(_SPLIT_LENGTHS.value) if _SPLIT_LENGTHS.value else []
    if lengths:
        with tempfile.TemporaryDirectory() as data_dir:
            start = time.perf_counter()
            results = build(
                "qa1",
                lengths,
                data_dir=data_dir,
                manual_dir=manual,
                options=BuildOptions(num_samples=_NUM_SAMPLES.value, tokenizer=_TOKENIZER.value),
            )
            seconds = time.perf_counter() - start
        total = sum(r.mean_tokens * r.samples for r in results)
        split = {
            "lengths": lengths,
            "samples_each": _NUM_SAMPLES.value,
            "seconds": seconds,
            "tokens": total,
            "tokens_per_s": total / seconds,
            "per_length_s": {r.length: r.seconds for r in results},
        }

    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "tokenizer": tokenizer.name,
        "haystack": {
            "books": len(haystack.book_ids),
            "sentences": haystack.num_sentences,
            "tokens": haystack.num_tokens,
            "load_s": load_s,
        },
        "single_samples": singles,
        "peak_rss_gb_after_10M": rss_after_10m,
        "qa1_test_splits": split,
    }
    print(
        f"haystack: {len(haystack.book_ids)} books, {haystack.num_tokens:,} tokens, "
        f"loaded in {load_s:.1f} s ({tokenizer.name})"
    )
    print(f"{'what':<28}{'tokens':>14}{'seconds':>10}{'tokens/s':>14}")
    for s in singles:
        print(
            f"{'one qa1 sample ' + s['length']:<28}{s['tokens']:>14,}{s['seconds']:>10.3f}"
            f"{s['tokens_per_s']:>14,.0f}"
        )
    if split:
        what = f"qa1 test {lengths[0]}..{lengths[-1]} x{_NUM_SAMPLES.value}"
        print(
            f"{what:<28}{split['tokens']:>14,.0f}{split['seconds']:>10.1f}"
            f"{split['tokens_per_s']:>14,.0f}"
        )
    print(f"peak RSS after the 10M sample: {rss_after_10m:.2f} GB")
    out = Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
