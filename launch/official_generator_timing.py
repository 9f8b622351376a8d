r"""Times the official BABILong generator on one sample, on the offline data (a side-by-side
figure for `launch/benchmark_babilong.py`, which runs this file in a separate Python).

    python launch/official_generator_timing.py --babilong_repo=/path/to/booydar/babilong \
        --manual_dir=../shared/data --length=1000000 --out=/tmp/official.json

Runs `babilong/babilong_utils.py` of a checkout (or snapshot) of the official repository as
its `data/create_tasks.py` calls it: `TaskDataset` on the en-10k qa1 test file,
`SentenceSampler(shuffle=True)` over the offline books (Project Gutenberg boilerplate cut),
`NoiseInjectionDataset` with `sample_size = length - 300`, then GPT-2's `batch_decode` of the
tokens. Needs the official code's dependencies (`numpy`, `pandas`, `nltk`, `transformers<5`);
`torch` is only imported there for a `Dataset` base class and is replaced by a stand-in when
absent. On pandas 3 the reference's `lambda x: x if x is None else ...` in `get_dataset_df`
sees NaN for a missing answer; the copy it runs tests `isinstance(x, str)` instead (the
only change, made in a temporary folder). Standard library only here: no project imports.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tarfile
import tempfile
import time
import types
from pathlib import Path

QA1_TEST = "tasks_1-20_v1-2/en-10k/qa1_single-supporting-fact_test.txt"
_START = re.compile(r"^\s*\*\*\*\s*START OF (?:THE|THIS) PROJECT GUTENBERG[^\n]*$", re.I | re.M)
_END = re.compile(r"^\s*\*\*\*\s*END OF (?:THE|THIS) PROJECT GUTENBERG[^\n]*$", re.I | re.M)


def book_text(path: Path) -> str:
    text = path.read_text(encoding="utf-8").lstrip("\ufeff").replace("\r\n", "\n")
    start, end = _START.search(text), _END.search(text)
    return text[start.end() if start else 0 : end.start() if end else len(text)].strip()


def load_official(repo: Path, scratch: Path):
    """The official module, from a copy under `scratch` (with the pandas-3 fix)."""
    source = (repo / "babilong" / "babilong_utils.py").read_text(encoding="utf-8")
    source = source.replace("lambda x: x if x is None else", "lambda x: None if not "
                            "isinstance(x, str) else")
    (scratch / "babilong_utils_run.py").write_text(source, encoding="utf-8")
    try:
        import torch  # noqa: F401
    except ImportError:
        data = types.ModuleType("torch.utils.data")
        data.Dataset = type("Dataset", (), {})
        utils = types.ModuleType("torch.utils")
        utils.data = data
        torch_stub = types.ModuleType("torch")
        torch_stub.utils = utils
        sys.modules.update({"torch": torch_stub, "torch.utils": utils, "torch.utils.data": data})
    sys.path.insert(0, str(scratch))
    import babilong_utils_run

    return babilong_utils_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--babilong_repo", required=True, type=Path)
    parser.add_argument("--manual_dir", required=True, type=Path)
    parser.add_argument("--length", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    from transformers import GPT2TokenizerFast

    gpt2 = args.manual_dir / "gpt2_tokenizer"
    tokenizer = GPT2TokenizerFast(vocab_file=str(gpt2 / "vocab.json"),
                                  merges_file=str(gpt2 / "merges.txt"))
    if not tokenizer.encode(" Where is Mary?", add_special_tokens=False):
        # transformers 5 builds an empty tokenizer from these two files: the reference would
        # then skip every sentence (under 10 tokens) and loop forever.
        sys.exit("error: this transformers builds an empty GPT-2 tokenizer from vocab.json and "
                 "merges.txt; install transformers<5 (4.57 was used)")
    books = [{"text": book_text(p)} for p in sorted((args.manual_dir / "haystack").glob("*.txt"))]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        official = load_official(args.babilong_repo, scratch)
        with tarfile.open(args.manual_dir / "babi" / "tasks_1-20_v1-2-en-10k.tar.gz") as tar:
            tar.extract(QA1_TEST, scratch, filter="data")
        start = time.perf_counter()
        task = official.TaskDataset(str(scratch / QA1_TEST))
        parse_s = time.perf_counter() - start
        sampler = official.SentenceSampler(books, tokenizer=tokenizer, shuffle=True,
                                           random_seed=0)
        dataset = official.NoiseInjectionDataset(task_dataset=task, noise_sampler=sampler,
                                                 tokenizer=tokenizer,
                                                 sample_size=args.length - 300)
        runs = []
        for i in range(args.samples):
            start = time.perf_counter()
            sample = dataset[i]
            made = time.perf_counter() - start
            text = tokenizer.batch_decode([sample["input_tokens"]], add_special_tokens=False)[0]
            runs.append({"sample_s": made, "with_decode_s": time.perf_counter() - start,
                         "tokens": len(sample["input_tokens"]), "chars": len(text.strip())})
    report = {"what": "official babilong_utils.py, one qa1 sample (NoiseInjectionDataset[i], "
                      "then batch_decode), fresh sampler, samples in turn",
              "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "length": args.length, "parse_qa1_test_s": parse_s, "runs": runs}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
