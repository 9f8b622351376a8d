"""Evaluating RMT on BABILong: accuracy by task and length, results.json and a heatmap.

`evaluate_model` runs a model over the test samples of every (task, length) cell and scores
its greedy answers with the official label-set metric (`babilong_tfds.metric.label_score`)
and exact match. Samples come from one of three sources:

  'files'      made on the fly from the original bAbI test questions (the records of
               `babilong_tfds.dataset.generate_split`, the same ones the TFDS builder
               materializes with its default options and seed 0);
  'generated'  made on the fly from stories of the bAbI simulator;
  'tfds'       a materialized split, `tfds.data_source(tfds_name.format(task, length),
               split='test', data_dir=data_dir)`; when that name is absent and one build
               of the cell with other options is there (`launch.build_babilong` names
               them `qa1_4k_test100`, ...), that one;
  'published'  published samples, `babilong_tfds.published.load_samples(data, task,
               length)`: our JSONL export, a folder in the Hugging Face layout or
               `hf:RMT-team/babilong`; their `input` text is tokenized with the model's
               tokenizer.

Lengths up to 512k run batched: one jitted `scan_segments` + `generate_answer` per batch,
padded to whole batches so that each length compiles once. Lengths from `stream_from` on
(1M, 10M) are made and run one batch at a time through `stream_infer`, which scans chunks of
segments: device memory stays flat, and the host holds one batch of contexts at a time.

The returned dict (and results.json) looks like

  {'results': {task: {length: {'accuracy': float, 'exact_match': float, 'count': int}}},
   'mean_qa1_qa5': {length: float},      # only when qa1..qa5 were all evaluated
   'examples': {task: {length: [{'question', 'target', 'output', 'correct'}, ...]}},
   'meta': {'source', 'num_samples', 'tasks', 'lengths', 'seconds': {task: {length}}, ...}}

accuracy is the label-set score (the BABILong papers' number), in [0, 1].

`evaluate_checkpoint` writes results.json (and the heatmap) after every cell, marked
`meta['partial']` until the last one: an evaluation stopped midway (a signal, a killed
process, a machine taken back) keeps every cell it finished, and the same command run again
continues it, taking over the finished cells of a partial file made by the same evaluation
(the same checkpoint step, source, samples, recipe and seed).
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import jax
import numpy as np
from absl import logging
from flax import nnx

from babilong_tfds import metric, published
from babilong_tfds.dataset import generate_split
from babilong_tfds.tasks import LENGTHS, check_length, parse_lengths, parse_tasks
from rmt_jax import curriculum, input_pipeline
from rmt_jax.checkpointing import parse_step
from rmt_jax.core.answer import generate_answer, generate_in_context, greedy_answer
from rmt_jax.core.model import RMT
from rmt_jax.core.streaming import stream_in_context, stream_infer
from rmt_jax.files import atomic_write, prepare_workdir, run_path
from rmt_jax.run_control import stop_point

SOURCES = ("files", "generated", "tfds", "published")
DEFAULT_TFDS_NAME = "babilong/{task}_{length}"
# Lengths from this one on are streamed through `stream_infer`, batch by batch.
DEFAULT_STREAM_FROM = "1M"
# Predictions kept per cell in the results, to read what the model says.
EXAMPLES_PER_CELL = 3
RESULTS_FILE = "results.json"
HEATMAP_FILE = "heatmap.png"


# -- samples ------------------------------------------------------------------------------
def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def iter_records(
    task: str,
    length: str,
    num_samples: int,
    *,
    source: str = "files",
    composer=None,
    babi_root: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    tfds_name: str = DEFAULT_TFDS_NAME,
    seed: int = 0,
    data: str | None = None,
) -> Iterator[dict]:
    """The first `num_samples` test records of one cell (fewer if a TFDS split or a published
    set is smaller), made or read one at a time."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}: expected one of {', '.join(SOURCES)}")
    if source == "tfds":
        import tensorflow_datasets as tfds

        name = resolve_tfds_name(tfds_name, task, length, data_dir)
        try:
            split = tfds.data_source(name, split="test", data_dir=data_dir)
        except NotImplementedError as e:  # a tfrecord build: no random access
            raise ValueError(f"{name} cannot be read by index ({e}); rebuild it in array_record "
                             "(the builder's default: drop --file_format=tfrecord)") from e
        count = min(num_samples, len(split))
        if count < num_samples:
            logging.warning("%s has %d test samples, fewer than the %d asked", name,
                            len(split), num_samples)
        yield from (dict(split[i]) for i in range(count))
        return
    if source == "published":
        if not data:
            raise ValueError("source='published' needs data: a JSONL export folder, a folder "
                             "in the Hugging Face layout or hf:RMT-team/babilong")
        samples = published.load_samples(data, task, length)
        if len(samples) < num_samples:
            logging.warning("%s holds %d samples of %s at %s, fewer than the %d asked", data,
                            len(samples), task, length, num_samples)
        # Published samples carry no task field; the encoder needs it.
        yield from ({**s, "task": task} for s in samples[:num_samples])
        return
    if composer is None:
        raise ValueError(f"source={source!r} makes samples on the fly and needs a composer "
                         "(input_pipeline.make_composer(config))")
    # The composer's tokens, as training sees them. They equal the tokenizer's ids of the
    # text (tests/test_evaluate.py), and tokenizing 1M tokens of text again costs ~0.3 s.
    records = generate_split(composer, task, length, "test", num_samples, seed=seed,
                             babi_source=source, babi_root=babi_root, with_text=False,
                             with_ids=True)
    yield from (record for _, record in records)


def resolve_tfds_name(tfds_name: str, task: str, length: str,
                      data_dir: str | os.PathLike | None) -> str:
    """`tfds_name` formatted for the cell; when no such dataset is under `data_dir` and
    exactly one build of the cell with other options is (`{name}_SUFFIX`, as
    `launch.build_babilong` names them), that one. Else a ValueError saying what to build."""
    from etils import epath

    name = tfds_name.format(task=task, length=length)
    builder, _, config = name.partition("/")
    if not config:
        return name
    root = epath.Path(data_dir if data_dir is not None else
                      os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()
    if (root / builder / config).exists():
        return name
    others = sorted(
        p.name for p in (root / builder).glob(f"{config}_*")
        if any(p.glob("*/*-test.array_record*"))
    ) if (root / builder).exists() else []
    if len(others) == 1:
        logging.info("no %s under %s: reading %s/%s", name, root, builder, others[0])
        return f"{builder}/{others[0]}"
    if others:
        raise ValueError(f"no {name} under {root}, and several builds of {task} at {length}: "
                         f"{', '.join(others)}; pick one with --tfds_name (e.g. "
                         f"{builder}/{{task}}_{{length}}{others[0][len(config):]})")
    raise ValueError(f"no TFDS dataset {name} under {root}: build it with python -m "
                     f"launch.build_babilong --tasks={task} --lengths={length} "
                     f"--data_dir={root}, or tfds build babilong_tfds/babilong "
                     f"--config={task}_{length} --data_dir={root}")


def encode_records(records: Sequence[dict], tokenizer, config) -> list[dict]:
    """Encodes records to examples padded to the same number of segments (the cell's most,
    counting the question and answer slots in the 'in_context' answer mode)."""
    with_ids = []
    for record in records:
        if "input_ids" not in record:
            record = {**record, "input_ids": np.asarray(tokenizer.encode(_text(record["input"])),
                                                        np.int32)}
        with_ids.append(record)
    longest = max(len(r["input_ids"]) for r in with_ids)
    seg_len = config.model.segment_len
    # 'in_context': the question and answer slots end the last segment, so the context is
    # padded to whole segments less their tokens (no segment of padding alone in front)
    reserved = curriculum.question_slots(config)
    reserved = reserved if reserved < seg_len else 0
    context_len = max(1, math.ceil((longest + reserved) / seg_len)) * seg_len - reserved
    return [input_pipeline.encode_example(r, tokenizer, config, context_len=context_len)
            for r in with_ids]


# -- running the model --------------------------------------------------------------------
_STATIC = ("graphdef", "max_new_tokens", "stop_id")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _scan_and_generate(graphdef, params, context, context_mask, question, question_length, *,
                       max_new_tokens: int, stop_id: int | None):
    return greedy_answer(nnx.merge(graphdef, params), context, context_mask, question,
                         question_length, max_new_tokens=max_new_tokens, stop_id=stop_id)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _generate(graphdef, params, state, question, question_length, *, max_new_tokens: int,
              stop_id: int | None):
    return generate_answer(nnx.merge(graphdef, params), state, question,
                           max_new_tokens=max_new_tokens, question_lengths=question_length,
                           stop_id=stop_id)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _generate_in_context(graphdef, params, state, last, lengths, *, max_new_tokens: int,
                         stop_id: int | None):
    return generate_in_context(nnx.merge(graphdef, params), state, last, lengths,
                               max_new_tokens=max_new_tokens, stop_id=stop_id)


def answer_batch(model: RMT, batch: dict, *, max_new_tokens: int,
                 stop_id: int | None = None) -> np.ndarray:
    """Greedy answer ids [B, max_new_tokens] for a collated batch (context in one scan).
    stop_id: the end-of-answer token, after which a row's slots are not generated (the
    batch stops once every row has it)."""
    stop_point()  # a training run's evaluation stops here on SIGTERM (run_control)
    graphdef, params = nnx.split(model)
    ids = _scan_and_generate(graphdef, params, batch["context"], batch["context_mask"],
                             batch["question"], batch["question_length"],
                             max_new_tokens=max_new_tokens, stop_id=stop_id)
    return np.asarray(ids)


def answer_streaming(model: RMT, batch: dict, *, max_new_tokens: int,
                     chunk_segments: int = 64, stop_id: int | None = None) -> np.ndarray:
    """Greedy answer ids [B, max_new_tokens] for a collated batch, its context streamed in
    chunks of segments (`stream_infer` with the batch's mask: shorter rows end in padding,
    whose empty segments leave their memory as it is); stop_id as in `answer_batch`."""
    stop_point()  # a training run's evaluation stops here on SIGTERM (run_control)
    graphdef, params = nnx.split(model)
    if model.config.answer_mode == "in_context":  # only the last segment holds the question
        state, last, lengths = stream_in_context(
            model, np.asarray(batch["context"]), np.asarray(batch["question"]),
            np.asarray(batch["question_length"]), answer_slots=max_new_tokens,
            mask=np.asarray(batch["context_mask"], bool), chunk_segments=chunk_segments)
        return np.asarray(_generate_in_context(graphdef, params, state, last, lengths,
                                               max_new_tokens=max_new_tokens, stop_id=stop_id))
    state = stream_infer(model, np.asarray(batch["context"]),
                         mask=np.asarray(batch["context_mask"], bool),
                         chunk_segments=chunk_segments)
    ids = _generate(graphdef, params, state, batch["question"], batch["question_length"],
                    max_new_tokens=max_new_tokens, stop_id=stop_id)
    return np.asarray(ids)


def _groups(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of `size` items (the last may be shorter)."""
    group = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _with_stop_points(items: Iterable) -> Iterator:
    """The items, with a `stop_point()` before each: making a long sample takes seconds."""
    for item in items:
        stop_point()
        yield item


def _batches(examples: Sequence[dict], batch_size: int) -> Iterable[tuple[dict, int]]:
    """Collated batches of exactly `batch_size` rows (the last padded by repetition), with
    the number of real rows, so that every batch of a cell has one shape."""
    for chunk in _groups(examples, batch_size):
        real = len(chunk)
        chunk += [chunk[-1]] * (batch_size - real)
        yield input_pipeline.collate(chunk), real


def predict(model: RMT, examples: Sequence[dict], *, max_new_tokens: int, batch_size: int,
            streaming: bool, chunk_segments: int = 64,
            stop_id: int | None = None) -> list[np.ndarray]:
    """Answer ids for every example, in batches of exactly `batch_size` rows (the last one
    padded) scanned at once or streamed chunk by chunk; stop_id as in `answer_batch`."""
    out = []
    for batch, real in _batches(examples, batch_size):
        if streaming:
            ids = answer_streaming(model, batch, max_new_tokens=max_new_tokens,
                                   chunk_segments=chunk_segments, stop_id=stop_id)
        else:
            ids = answer_batch(model, batch, max_new_tokens=max_new_tokens, stop_id=stop_id)
        out.extend(ids[:real])
    return out


# -- the evaluation -----------------------------------------------------------------------
def check_options(tasks, lengths, *, source: str, num_samples: int, batch_size: int,
                  data: str | None = None):
    """Validated (tasks, lengths); raises a ValueError naming what is wrong otherwise (for
    source='published' from a local folder: every cell must be in it)."""
    task_list = parse_tasks(tasks)
    length_list = parse_lengths(lengths)
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}: expected one of {', '.join(SOURCES)}")
    if source == "published" and not data:
        raise ValueError("source='published' needs data (--data): a JSONL export folder, a "
                         "folder in the Hugging Face layout or hf:RMT-team/babilong")
    if data and source != "published":
        raise ValueError(f"data={data!r} is read by source='published', not {source!r}")
    if source == "published" and not data.startswith(published.HF_PREFIX):
        held = published.find_splits(data)
        missing = [f"{t} at {n}" for t in task_list for n in length_list if (t, n) not in held]
        if missing:
            raise ValueError(f"{data} lacks {', '.join(missing)}: it holds "
                             f"{published.describe(held)}")
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be >= 1")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    return task_list, length_list


def evaluate_model(
    model: RMT,
    config,
    composer,
    tokenizer,
    *,
    tasks: str | Sequence[str],
    lengths: str | Sequence[str],
    num_samples: int = 100,
    source: str = "files",
    data_dir: str | os.PathLike | None = None,
    batch_size: int = 32,
    tfds_name: str = DEFAULT_TFDS_NAME,
    babi_root: str | os.PathLike | None = None,
    seed: int = 0,
    stream_from: str = DEFAULT_STREAM_FROM,
    chunk_segments: int = 64,
    data: str | None = None,
    done: dict | None = None,
    on_cell: Callable[[dict], None] | None = None,
) -> dict:
    """Accuracy and exact match of `model` on every (task, length) cell (see module doc).

    config: the training ConfigDict (`config.model.segment_len`, `config.data.*`).
    composer: needed for the on-the-fly sources, unused for 'tfds' and 'published' (may be
        None).
    babi_root: bAbI files for source='files' (default `config.data.babi_dir`).
    seed: 0 gives the records of the default materialized test splits.
    stream_from: lengths of at least this many tokens run through `stream_infer`.
    data: what source='published' reads (see `babilong_tfds.published`).
    done: results of an earlier run of this evaluation: its cells are taken over, not run.
    on_cell: called with the results so far (meta['partial'] True) after each cell run
        while others remain.
    """
    task_list, length_list = check_options(tasks, lengths, source=source,
                                           num_samples=num_samples, batch_size=batch_size,
                                           data=data)
    stream_tokens = check_length(stream_from)
    babi_root = babi_root if babi_root is not None else config.data.babi_dir
    max_new_tokens = config.data.max_answer_len
    results, examples, seconds = {}, {}, {}
    meta = {"source": source, "num_samples": num_samples, "tasks": task_list,
            "lengths": length_list, "seed": seed, "seconds": seconds}
    if source == "tfds":
        meta["tfds_name"] = tfds_name
    if source == "published":
        meta["data"] = data
    cells = [(task, length) for task in task_list for length in length_list]
    for n, (task, length) in enumerate(cells):
        if length in (done or {}).get("results", {}).get(task, {}):
            results.setdefault(task, {})[length] = done["results"][task][length]
            examples.setdefault(task, {})[length] = (
                done.get("examples", {}).get(task, {}).get(length, []))
            seconds.setdefault(task, {})[length] = (
                done["meta"].get("seconds", {}).get(task, {}).get(length))
            logging.info("%s %s: accuracy %.3f, kept from the earlier run", task, length,
                         results[task][length]["accuracy"])
            continue
        start = time.perf_counter()
        records = _with_stop_points(iter_records(
            task, length, num_samples, source=source, composer=composer,
            babi_root=babi_root, data_dir=data_dir, tfds_name=tfds_name, seed=seed,
            data=data))
        # Up to 512k: every sample at once, padded to the cell's longest (one compile).
        # Streamed (1M, 10M): batch by batch, so the host holds one batch of contexts.
        streaming = LENGTHS[length] >= stream_tokens
        rows = min(batch_size, num_samples)  # every batch of the cell has this shape
        groups = _groups(records, rows) if streaming else [list(records)]
        ids, targets, questions = [], [], []
        for group in groups:
            encoded = encode_records(group, tokenizer, config)
            ids += predict(model, encoded, max_new_tokens=max_new_tokens, batch_size=rows,
                           streaming=streaming, chunk_segments=chunk_segments,
                           stop_id=int(tokenizer.eos_id))
            targets += [_text(r["target"]) for r in group]
            questions += [_text(r["question"]) for r in group]
            del encoded, group  # this batch's contexts go before the next one is made
        outputs = [input_pipeline.decode_answer(i, tokenizer) for i in ids]
        cell, cell_examples = metric.score_cell(targets, outputs, questions, task,
                                                num_examples=EXAMPLES_PER_CELL)
        results.setdefault(task, {})[length] = cell
        examples.setdefault(task, {})[length] = cell_examples
        seconds.setdefault(task, {})[length] = round(time.perf_counter() - start, 3)
        logging.info("%s %s: accuracy %.3f, exact match %.3f over %d samples (%.1f s)",
                     task, length, results[task][length]["accuracy"],
                     results[task][length]["exact_match"], len(targets),
                     seconds[task][length])
        if on_cell is not None and n + 1 < len(cells):
            on_cell(_assemble(results, examples, dict(meta, partial=True), length_list))
    return _assemble(results, examples, meta, length_list)


def _assemble(results: dict, examples: dict, meta: dict, lengths: Sequence[str]) -> dict:
    out = {"results": results}
    mean = metric.leaderboard_means(results, lengths)
    if mean:
        out["mean_qa1_qa5"] = mean
    out["examples"] = examples
    out["meta"] = meta
    return out


# -- writing ------------------------------------------------------------------------------
def _ordered(results: dict) -> tuple[list[str], list[str]]:
    tasks = list(results["results"])
    lengths = list(results.get("meta", {}).get("lengths", []))
    for cells in results["results"].values():
        lengths += [length for length in cells if length not in lengths]
    return tasks, lengths


def accuracy_grid(results: dict) -> tuple[np.ndarray, list[str], list[str]]:
    """Accuracy in % [rows, lengths] (NaN where not run): the tasks, then the qa1..qa5 mean
    when present; with the row and column labels."""
    tasks, lengths = _ordered(results)
    rows = [[results["results"][t].get(n, {}).get("accuracy", np.nan) for n in lengths]
            for t in tasks]
    labels = list(tasks)
    if results.get("mean_qa1_qa5"):
        rows.append([results["mean_qa1_qa5"].get(n, np.nan) for n in lengths])
        labels.append("qa1-5")
    return 100.0 * np.asarray(rows, np.float64), labels, lengths


def plot_heatmap(results: dict, path: str | os.PathLike, *, title: str | None = None) -> None:
    """Accuracy (%) by task (rows) and length (columns), numbers in the cells."""
    grid, rows, cols = accuracy_grid(results)
    rule = len(rows) - 1 if results.get("mean_qa1_qa5") else None
    draw_grid(grid, rows, cols, path, title=title or "RMT accuracy (%) on BABILong",
              rule_before=rule)


def draw_grid(grid: np.ndarray, rows: Sequence[str], cols: Sequence[str],
              path: str | os.PathLike, *, title: str, rule_before: int | None = None) -> None:
    """A heatmap of accuracies in % (NaN: not run, drawn grey with '-') written atomically;
    a rule above row `rule_before`.

    Drawn on a bare `Figure`, which renders with Agg and leaves pyplot's backend alone (so
    it also works inside a notebook or a training loop)."""
    import matplotlib
    from matplotlib.figure import Figure

    width = 1.0 + 0.8 * len(cols) + 0.07 * max(len(r) for r in rows)
    fig = Figure(figsize=(width, 1.2 + 0.45 * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="lightgray")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    for r in range(grid.shape[0]):
        for c in range(grid.shape[1]):
            value = grid[r, c]
            ax.text(c, r, "-" if np.isnan(value) else f"{value:.0f}", ha="center",
                    va="center", fontsize=9)
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("context length (tokens)")
    if rule_before is not None:
        ax.axhline(rule_before - 0.5, color="black", linewidth=1.5)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


def comparison_grid(runs: dict[str, dict], task: str, lengths: Sequence[str],
                    reference: dict[str, dict[str, float]] | None = None):
    """One row per model: `runs` maps a name to its results.json (evaluate_model's output),
    `reference` a name to published accuracies in % by length -> (grid [rows, lengths] in %,
    row names). A length a run did not evaluate is NaN."""
    rows, names = [], []
    for name, results in runs.items():
        cells = results["results"].get(task)
        if cells is None:
            raise ValueError(f"run {name!r} has no results for {task}: it evaluated "
                             f"{sorted(results['results'])}")
        rows.append([100.0 * cells[n]["accuracy"] if n in cells else np.nan for n in lengths])
        names.append(name)
    for name, cells in (reference or {}).items():
        rows.append([float(cells[n]) if n in cells else np.nan for n in lengths])
        names.append(name)
    return np.asarray(rows, np.float64), names


def merge_results(parts: list[dict]) -> dict:
    """One results dict of several evaluations of one model (e.g. 0k..128k, then 1M): their
    cells, examples, lengths, seconds and samples per length, in the order given."""
    merged = copy.deepcopy(parts[0])
    meta = merged["meta"]
    meta["num_samples_by_length"] = {k: meta["num_samples"] for k in meta["lengths"]}
    for extra in parts[1:]:
        for key in ("results", "examples"):
            for task, cells in extra[key].items():
                merged[key].setdefault(task, {}).update(cells)
        meta["lengths"] = meta["lengths"] + extra["meta"]["lengths"]
        meta["num_samples_by_length"].update(
            {k: extra["meta"]["num_samples"] for k in extra["meta"]["lengths"]})
        for task, seconds in extra["meta"].get("seconds", {}).items():
            meta.setdefault("seconds", {}).setdefault(task, {}).update(seconds)
    return merged


def write_results(results: dict, out_dir: str | os.PathLike, *,
                  title: str | None = None) -> dict[str, Path]:
    """Writes results.json and heatmap.png into `out_dir` (local or gs://...), each atomically
    (temp + rename)."""
    out = run_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / RESULTS_FILE, out / HEATMAP_FILE

    def dump(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2, ensure_ascii=False, default=_jsonable)
            f.write("\n")

    atomic_write(json_path, dump)
    plot_heatmap(results, png_path, title=title)
    return {"results": json_path, "heatmap": png_path}


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to results.json")


def format_table(results: dict) -> str:
    """Accuracy / exact match (%) by task and length, as a text table."""
    tasks, lengths = _ordered(results)
    width = max(9, *(len(n) + 2 for n in lengths))
    header = f"{'task':<8}" + "".join(f"{n:>{width}}" for n in lengths)
    lines = ["accuracy / exact match (%)", header, "-" * len(header)]
    for task in tasks:
        cells = []
        for length in lengths:
            cell = results["results"][task].get(length)
            text = "-" if cell is None else (
                f"{100 * cell['accuracy']:.0f} / {100 * cell['exact_match']:.0f}")
            cells.append(f"{text:>{width}}")
        lines.append(f"{task:<8}" + "".join(cells))
    if results.get("mean_qa1_qa5"):
        mean = results["mean_qa1_qa5"]
        lines.append(f"{'qa1-5':<8}" + "".join(
            f"{(f'{100 * mean[n]:.0f}' if n in mean else '-'):>{width}}" for n in lengths))
    return "\n".join(lines)


# -- from a checkpoint --------------------------------------------------------------------
RECIPES = ("config", "official")
# The published generator's way of making a sample (babilong_tfds.compose.Recipe's defaults,
# Punkt sentences); the tokenizer stays the model's.
OFFICIAL_RECIPE = {"length_table": "official", "story_filter": "lines", "fill": "exact",
                   "splitter": "punkt"}


def official_recipe(config):
    """A copy of `config` whose samples are made as the published generator makes them:
    1k = 1,000 tokens, the story filter on fact lines, the haystack cut to the exact budget,
    Punkt sentences. The model's tokenizer is kept (lengths count its tokens)."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        for key, value in OFFICIAL_RECIPE.items():
            config.data[key] = value
    return config


def evaluate_checkpoint(
    workdir: str | os.PathLike,
    *,
    tasks: str | Sequence[str],
    lengths: str | Sequence[str],
    step: str | int | None = "best",
    out_dir: str | os.PathLike | None = None,
    num_samples: int = 100,
    source: str = "files",
    data_dir: str | os.PathLike | None = None,
    batch_size: int = 32,
    tfds_name: str = DEFAULT_TFDS_NAME,
    stream_from: str = DEFAULT_STREAM_FROM,
    chunk_segments: int = 64,
    allow_reuse: bool = False,
    data: str | None = None,
    recipe: str = "config",
    resume: bool = True,
    model_overrides: dict | None = None,
) -> dict:
    """Restores a checkpoint of `workdir`, evaluates it, writes results to `out_dir`
    (default `workdir/eval`) after every cell. Every argument is checked before anything is
    written. `allow_reuse` lets a sample use a book twice: 10M on the 35 offline books needs
    it. `recipe`: how samples are made on the fly ('files', 'generated'): 'config' as the
    training config says, 'official' as the published generator does (`official_recipe`).
    `resume`: a partial results.json in `out_dir` left by the same evaluation (stopped
    midway) gives its finished cells; False runs every cell again. `model_overrides`: saved
    model fields to change that leave the parameters as they are, e.g.
    {'attention_chunk': 512} (`checkpointing.override_model_fields`)."""
    check_options(tasks, lengths, source=source, num_samples=num_samples,
                  batch_size=batch_size, data=data)
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}: expected one of {', '.join(RECIPES)}")
    check_length(stream_from)
    step = parse_step(step)
    path = prepare_workdir(workdir, create=False, writable=False)  # gs://... stays remote
    workdir = os.fspath(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"workdir {workdir} does not exist: train a model first, e.g. python -m "
            f"launch.train --config=configs/rmt_babilong.py:small,qa1 --workdir={workdir}")
    from rmt_jax import checkpointing

    model, config, restored_step = checkpointing.restore_for_inference(
        workdir, step=step, model_overrides=model_overrides)
    if recipe == "official":
        config = official_recipe(config)
    tokenizer = input_pipeline.make_tokenizer(config)
    composer = (
        None if source in ("tfds", "published")
        else input_pipeline.make_composer(config, allow_reuse=allow_reuse)
    )
    data_cfg = config.data
    identity = {"workdir": workdir, "step": int(restored_step),
                "recipe": {k: data_cfg.get(k) for k in OFFICIAL_RECIPE}}
    if model_overrides:
        identity["model_overrides"] = dict(model_overrides)
    out_dir = out_dir if out_dir is not None else os.path.join(workdir, "eval")
    title = f"RMT step {int(restored_step)}: accuracy (%) on BABILong"
    done = None
    if resume:
        same = dict(identity, source=source, num_samples=num_samples, seed=0)
        if source == "tfds":
            same["tfds_name"] = tfds_name
        if source == "published":
            same["data"] = data
        done = partial_results(out_dir, same)

    def finish(results: dict) -> dict:
        results["meta"].update(identity, step_requested="latest" if step is None else step)
        write_results(results, out_dir, title=title)
        return results

    results = evaluate_model(model, config, composer, tokenizer, tasks=tasks, lengths=lengths,
                             num_samples=num_samples, source=source, data_dir=data_dir,
                             batch_size=batch_size, tfds_name=tfds_name, stream_from=stream_from,
                             chunk_segments=chunk_segments, data=data, done=done,
                             on_cell=finish)
    return finish(results)


def partial_results(out_dir: str | os.PathLike, identity: dict) -> dict | None:
    """The results.json in `out_dir` when an evaluation with these `identity` fields (meta
    keys: workdir, step, source, num_samples, seed, recipe; tfds_name or data where the
    source reads them) stopped there midway, else None."""
    path = run_path(out_dir) / RESULTS_FILE
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # none there, or unreadable: every cell runs (and replaces it)
    meta = results.get("meta") if isinstance(results, dict) else None
    if not isinstance(meta, dict) or not meta.get("partial"):
        return None
    for key, value in identity.items():
        if meta.get(key) != value:
            logging.info("%s holds a partial evaluation of another %s (%r, now %r): every cell "
                         "runs again", path, key, meta.get(key), value)
            return None
    if not isinstance(results.get("results"), dict):
        return None
    cells = sorted(f"{t} {n}" for t, c in results["results"].items() for n in c)
    logging.info("continuing the partial evaluation in %s (%s done; --noresume runs them "
                 "again)", path, ", ".join(cells))
    return results
