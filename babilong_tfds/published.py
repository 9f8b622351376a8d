"""BABILong samples from wherever they were published: one reader, one writer.

`load_samples(data, task, length)` returns the samples of one task at one length as a list
of dicts, each with at least `input` (the context), `question` and `target`, plus whatever
other fields the source holds (ours add `task`, `length`, `fact_offsets`, `seed`, ...).
`data` is one of:

- a folder of our JSONL export, `{data}/{task}/{length}.jsonl`
  (`babilong_tfds.build.export_jsonl`, `launch.build_babilong --jsonl_dir`);
- a folder in the Hugging Face layout of the published `RMT-team/babilong` sets (one config
  per length, one split per task), as downloaded with
  `huggingface-cli download --repo-type dataset RMT-team/babilong --local-dir DIR`:
  a README.md whose YAML `configs:` front matter maps each config to its split files
  (today's `data/{task}/{length}.json`), or, without one, the file names of earlier
  revisions (`{length}/{task}-00000-of-00001.parquet`, `{task}/{length}-00000-of-00001.parquet`);
  `write_hf_dir` writes this layout (`data/{task}/{length}-{digest}.json` and the card), so
  our own sets read back the same way;
- `hf:OWNER/NAME` (`hf:RMT-team/babilong`, `hf:RMT-team/babilong-1k-samples`): read through
  `datasets.load_dataset(NAME, length, split=task)`, which needs the `datasets` package and
  the Hub (or its local cache).

Records keep the order of the source. Nothing here imports TFDS or TensorFlow.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from babilong_tfds.tasks import LENGTHS, TASKS, check_length, check_task

HF_PREFIX = "hf:"
PUBLISHED_REPOS = ("RMT-team/babilong", "RMT-team/babilong-1k-samples")
# The fields every published sample has, first in every file we write.
PUBLISHED_FIELDS = ("input", "question", "target")

_TASK = r"(?P<task>qa\d+)"
_LENGTH = r"(?P<length>\d+[kM])"
# File layouts recognised without a README, as paths relative to the folder.
_LAYOUTS = (
    re.compile(rf"{_TASK}/{_LENGTH}\.jsonl"),  # our JSONL export
    re.compile(rf"data/{_TASK}/{_LENGTH}\.jsonl?"),  # RMT-team/babilong today, and ours
    re.compile(rf"{_LENGTH}/{_TASK}-\d+-of-\d+\.parquet"),  # earlier revisions, 1k-samples
    re.compile(rf"{_TASK}/{_LENGTH}-\d+-of-\d+\.parquet"),  # the first revision
)
_DATA_SUFFIXES = (".json", ".jsonl", ".parquet")


def load_samples(data: str, task: str, length: str) -> list[dict]:
    """The samples of `task` at `length` from `data` (see the module docstring).

    Raises ValueError when `data` is neither a folder nor `hf:NAME`, when it lacks the task
    or length (naming what it holds), when a file is malformed or a sample lacks a field, and
    when the Hub cannot be reached for `hf:` sources.
    """
    check_task(task)
    check_length(length)
    if data.startswith(HF_PREFIX):
        records = _load_from_hub(data[len(HF_PREFIX) :], task, length)
        where = data
    else:
        inventory = find_splits(data)
        files = inventory.get((task, length))
        if not files:
            raise ValueError(
                f"{data} holds no {task} at {length}: it holds {describe(inventory)}; "
                "pick one of those or build the missing set (launch.build_babilong)"
            )
        records = [r for path in files for r in _read_file(path)]
        where = ", ".join(str(p) for p in files)
    for i, record in enumerate(records):
        missing = [k for k in PUBLISHED_FIELDS if k not in record]
        if missing:
            raise ValueError(
                f"sample {i} of {task} at {length} in {where} lacks {', '.join(missing)}: "
                f"every sample needs {', '.join(PUBLISHED_FIELDS)}"
            )
    return records


def find_splits(data: str | os.PathLike) -> dict[tuple[str, str], list[Path]]:
    """(task, length) -> the files holding those samples, for a local folder of any layout."""
    root = Path(data)
    if not root.is_dir():
        raise ValueError(
            f"--data {data} is not a folder: expected a JSONL export folder, a folder in the "
            f"Hugging Face layout, or {HF_PREFIX}NAME (e.g. {HF_PREFIX}{PUBLISHED_REPOS[0]})"
        )
    configs = _readme_configs(root / "README.md")
    if configs is not None:
        return _inventory_from_configs(root, configs)
    inventory: dict[tuple[str, str], list[Path]] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix not in _DATA_SUFFIXES or not path.is_file():
            continue
        relative = path.relative_to(root).as_posix()
        for layout in _LAYOUTS:
            match = layout.fullmatch(relative)
            if match and match["length"] in LENGTHS:
                inventory.setdefault((match["task"], match["length"]), []).append(path)
                break
    return inventory


def describe(inventory: Mapping[tuple[str, str], list[Path]]) -> str:
    """'qa1 at 0k, 1k; qa2 at 0k' (or 'nothing recognisable')."""
    if not inventory:
        return (
            "nothing recognisable (expected {task}/{length}.jsonl, data/{task}/{length}.json, "
            "{length}/{task}-*.parquet or a README.md with configs)"
        )
    by_task: dict[str, list[str]] = {}
    for task, length in inventory:
        by_task.setdefault(task, []).append(length)
    return "; ".join(
        f"{task} at {', '.join(sorted(lengths, key=_length_order))}"
        for task, lengths in sorted(by_task.items(), key=lambda kv: _task_order(kv[0]))
    )


def _task_order(task: str) -> int:
    return TASKS.index(task) if task in TASKS else len(TASKS)


def _length_order(length: str) -> int:
    return LENGTHS.get(length, -1)


# --------------------------------------------------------------------------- README configs


def _readme_configs(readme: Path) -> list[dict] | None:
    """The `configs:` list of a dataset card's YAML front matter, or None without one."""
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8")
    match = re.match(r"---\s*\n(.*?)\n---\s*(\n|$)", text, flags=re.DOTALL)
    if match is None:
        return None
    import yaml  # PyYAML comes with flax; only dataset cards need it

    try:
        front = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{readme}: its YAML front matter does not parse ({e})") from e
    configs = front.get("configs") if isinstance(front, dict) else None
    return configs if isinstance(configs, list) else None


def _inventory_from_configs(root: Path, configs: list[dict]) -> dict[tuple[str, str], list[Path]]:
    inventory: dict[tuple[str, str], list[Path]] = {}
    for config in configs:
        length = str(config.get("config_name", ""))
        data_files = config.get("data_files", [])
        if isinstance(data_files, Mapping):  # {split: path(s)}
            entries = list(data_files.items())
        else:  # [{split: ..., path: ...}] as the published card has it
            entries = [(d.get("split"), d.get("path")) for d in data_files if isinstance(d, dict)]
        for split, patterns in entries:
            if split is None or patterns is None:
                continue
            if isinstance(patterns, str):
                patterns = [patterns]
            files = [f for pattern in patterns for f in _glob(root, pattern)]
            if files:
                inventory[(str(split), length)] = files
    return inventory


def _glob(root: Path, pattern: str) -> list[Path]:
    if not any(ch in pattern for ch in "*?["):
        path = root / pattern
        return [path] if path.is_file() else []
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and fnmatch.fnmatchcase(p.relative_to(root).as_posix(), pattern)
    )


# --------------------------------------------------------------------------- reading files


def _read_file(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ValueError(
                f"{path} is parquet, which needs pyarrow: pip install pyarrow (or datasets)"
            ) from e
        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    try:
        if stripped.startswith("["):  # one JSON array of records
            records = json.loads(text)
        else:  # JSON Lines, as datasets' to_json and our exports write
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is neither JSON Lines nor a JSON array of samples: {e}") from e
    if not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path}: expected one JSON object per sample")
    return records


def _load_from_hub(name: str, task: str, length: str) -> list[dict]:
    if not name:
        raise ValueError(f"{HF_PREFIX} needs a dataset name, e.g. {HF_PREFIX}{PUBLISHED_REPOS[0]}")
    try:
        import datasets
    except ImportError as e:
        raise ValueError(
            f"reading {HF_PREFIX}{name} needs the datasets package: pip install datasets, or "
            "download the set and pass its folder"
        ) from e
    try:
        split = datasets.load_dataset(name, length, split=task)
    except (ConnectionError, OSError) as e:
        raise ValueError(
            f"cannot read {HF_PREFIX}{name} (config {length}, split {task}) from the Hugging "
            f"Face Hub: {type(e).__name__}: {e}. Offline? Download it where there is a network "
            f"(huggingface-cli download --repo-type dataset {name} --local-dir DIR) and pass "
            "--data=DIR"
        ) from e
    except ValueError as e:  # an unknown config or split
        raise ValueError(f"{HF_PREFIX}{name} has no {task} at {length}: {e}") from e
    return [dict(record) for record in split]


# --------------------------------------------------------------------------- writing


def hf_data_file(task: str, length: str, digest: str) -> str:
    """Where `write_hf_dir` puts one split, relative to the folder: the published
    `data/{task}/{length}` with the first hex digits of the file's SHA-256 added.

    `datasets` caches a local folder's split under the file names its card lists, whatever
    their contents: a split rewritten under the same name would read back stale from that
    cache, so new contents get a new name."""
    return f"data/{task}/{length}-{digest[:16]}.json"


def dataset_card(files: Mapping[tuple[str, str], str]) -> str:
    """README.md text whose YAML front matter declares one config per length, one split per
    task ({(task, length): relative path}), so that `datasets.load_dataset(DIR, length,
    split=task)` finds the files."""
    by_length: dict[str, list[str]] = {}
    for task, length in files:
        by_length.setdefault(length, []).append(task)
    lines = ["---", "configs:"]
    for length in sorted(by_length, key=_length_order):
        lines += [f'- config_name: "{length}"', "  data_files:"]
        for task in sorted(by_length[length], key=_task_order):
            lines += [f"  - split: {task}", f"    path: {files[(task, length)]}"]
    lines += [
        "---",
        "",
        "# BABILong samples",
        "",
        "bAbI questions hidden in book text, written by `launch.build_babilong --hf_dir` in the "
        "layout of the published `RMT-team/babilong` sets: one config per length, one split per "
        "task, JSON Lines with `input`, `question`, `target` and the builder's own fields.",
        "",
        "```python",
        "import datasets",
        f'ds = datasets.load_dataset(DIR, "{min(by_length, key=_length_order)}", split="qa1")',
        "```",
        "",
    ]
    return "\n".join(lines)


def _ordered(record: Mapping) -> dict:
    rest = dict(record)
    missing = [k for k in PUBLISHED_FIELDS if k not in rest]
    if missing:
        raise ValueError(f"a sample lacks {', '.join(missing)}: {sorted(rest)}")
    first = {k: rest.pop(k) for k in PUBLISHED_FIELDS}
    return first | dict(sorted(rest.items()))


def check_hf_dir(out_dir: str | os.PathLike) -> bool:
    """Whether `out_dir` holds an earlier `write_hf_dir` output (False: absent or empty);
    a ValueError for a file or a non-empty folder that is not one, which is never touched."""
    out = Path(out_dir)
    if not out.exists():
        return False
    if not out.is_dir():
        raise ValueError(f"--hf_dir {out} exists and is not a folder")
    if not any(out.iterdir()):
        return False
    if not (out / "README.md").is_file():
        raise ValueError(
            f"--hf_dir {out} is a non-empty folder without a README.md: refusing to write "
            "into it; pass a new folder or one written by --hf_dir before"
        )
    return True


def write_hf_dir(
    out_dir: str | os.PathLike, samples: Mapping[tuple[str, str], Iterable[Mapping]]
) -> list[Path]:
    """Writes {(task, length): samples} into `out_dir` in the published layout; returns the files.

    Splits already in `out_dir` (from an earlier call) stay, those given replace theirs, and the
    README is rewritten for the union. The new folder is assembled beside `out_dir` and swapped
    in at the end: on any error `out_dir` is left as it was and nothing half-written remains.
    """
    out = Path(out_dir)
    if not samples:
        raise ValueError("nothing to write: no (task, length) samples given")
    for task, length in samples:
        check_task(task)
        check_length(length)
    kept: dict[tuple[str, str], Path] = {}
    if check_hf_dir(out):
        kept = {
            key: files[0]
            for key, files in find_splits(out).items()
            if len(files) == 1 and files[0].parent == out / "data" / key[0]
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    old = None
    files: dict[tuple[str, str], str] = {}
    try:
        for key, path in kept.items():
            if key not in samples:
                files[key] = path.relative_to(out).as_posix()
                (tmp / files[key]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, tmp / files[key])
        for (task, length), records in samples.items():
            files[(task, length)] = _write_split(tmp, task, length, records)
        (tmp / "README.md").write_text(dataset_card(files), encoding="utf-8")
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        if old is not None and not out.exists():
            os.replace(old, out)
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(old)
    return [out / files[key] for key in sorted(files)]


def _write_split(root: Path, task: str, length: str, records: Iterable[Mapping]) -> str:
    """Writes one split as JSON Lines under `root`; returns its path relative to `root`."""
    folder = root / "data" / task
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{length}.partial"
    digest = hashlib.sha256()
    with open(partial, "w", encoding="utf-8") as f:
        for record in records:
            line = json.dumps(_ordered(record), ensure_ascii=False) + "\n"
            digest.update(line.encode("utf-8"))
            f.write(line)
    relative = hf_data_file(task, length, digest.hexdigest())
    os.replace(partial, root / relative)
    return relative
