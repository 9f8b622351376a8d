"""From BABILong records to RMT batches: tokenizer, haystack, grain pipelines per stage.

Example contract (`encode_example`; L = segment_len, S segments, Qq = max_question_len,
A = max_answer_len):

  context           int32 [S*L]  context tokens, then padding (0)
  context_mask      bool  [S*L]  True on real context tokens
  question          int32 [Qq]   question tokens (cut from the left if longer), then padding
  question_length   int32 []     real question tokens
  answer            int32 [A]    answer tokens + eos (cut if longer), then padding
  query             int32 [Qq+A] question then answer tokens back to back, then padding
  loss_mask         float32 [Qq+A]  1 where `query` holds an answer token (eos included)
  task_id           int32 []     index of the task in babilong_tfds.tasks.TASKS

`collate` stacks examples into a batch ([B, ...]). Training batches come from
`TrainData.iterator(stage)`: a grain pipeline over `BabilongSource`, whose record i depends
on (seed, stage, i) alone, so a batch depends on the config, the stage and the iterator
state alone; that state is a small JSON-able dict saved with each checkpoint.
"""

from __future__ import annotations

import functools
import math

import grain
import ml_collections
import numpy as np

from babilong_tfds.compose import LEGACY_RECIPE, Composer, Recipe
from babilong_tfds.dataset import BabilongSource
from babilong_tfds.haystack import Haystack, load_books_from_dir
from babilong_tfds.tasks import TASKS, parse_tasks
from babilong_tfds.tokenizer import get_tokenizer
from rmt_jax.core.config import ModelConfig
from rmt_jax.curriculum import Curriculum

# Records of a training stream before it would wrap (never reached in practice).
STREAM_RECORDS = (1 << 31) - 1


@functools.lru_cache(maxsize=4)
def _tokenizer(spec: str):
    return get_tokenizer(spec)


def make_tokenizer(config: ml_collections.ConfigDict):
    """The tokenizer named by `config.data.tokenizer` (loaded once per process)."""
    return _tokenizer(config.data.tokenizer)


@functools.lru_cache(maxsize=2)
def _haystack(haystack_dir: str, tokenizer_spec: str, splitter: str) -> Haystack:
    return Haystack.build(load_books_from_dir(haystack_dir), _tokenizer(tokenizer_spec),
                          splitter=splitter)


def make_composer(config: ml_collections.ConfigDict, *, allow_reuse: bool = False) -> Composer:
    """Haystack (tokenized once, cached on disk and in the process) + tokenizer + recipe.

    A config saved before the recipe fields existed was trained with the legacy options."""
    data = config.data
    haystack = _haystack(data.haystack_dir, data.tokenizer, data.get("splitter", "blingfire"))
    recipe = Recipe(lengths=data.get("length_table", LEGACY_RECIPE.lengths),
                    story_filter=data.get("story_filter", LEGACY_RECIPE.story_filter),
                    fill=data.get("fill", LEGACY_RECIPE.fill))
    return Composer(haystack, make_tokenizer(config), allow_reuse=allow_reuse, recipe=recipe)


def model_config(config: ml_collections.ConfigDict, vocab_size: int) -> ModelConfig:
    """`config.model` as a validated `ModelConfig` (0 / '' mean: the tokenizer's, all, auto)."""
    m = config.model
    # the fields as ModelConfig.from_fields reads them, which also maps a config saved
    # before `memory` (its `retrieval` bool) and before RMT-R's official block
    legacy = {"retrieval": m.retrieval} if "memory" not in m and "retrieval" in m else {}
    return ModelConfig.from_fields(dict(
        layers=m.layers,
        d_model=m.d_model,
        heads=m.heads,
        vocab_size=m.vocab_size or vocab_size,
        segment_len=m.segment_len,
        mem_tokens=m.mem_tokens,
        max_positions=max(
            m.max_positions,
            config.data.max_question_len + config.data.max_answer_len + 2 * m.mem_tokens,
        ),
        param_dtype=m.param_dtype,
        dtype=m.dtype,
        **legacy,
        **({"memory": m.memory} if "memory" in m else {}),
        d_mem=m.get("d_mem", 0),
        dropout=m.dropout,
        retrieval_dropout=m.get("retrieval_dropout"),
        **({"retrieval_variant": m.retrieval_variant} if "retrieval_variant" in m else {}),
        remat_policy=m.remat_policy,
        scan_unroll=m.get("scan_unroll", 1),  # absent from configs saved before it existed
        bptt_segments=m.bptt_segments or None,
        attention_impl=m.attention_impl or None,
        attention_chunk=m.get("attention_chunk", 0),  # configs saved before it: 0
        answer_mode=m.get("answer_mode", "separate"),  # configs saved before it: 'separate'
        tied_head=m.get("tied_head", True),  # configs saved before it: the tied head
        canon_kernel=m.get("canon_kernel", 0),  # configs saved before it: no Canon layers
        positions=m.get("positions", "learned"),  # configs saved before it: learned
        write_positions=m.get("write_positions", "follow"),  # configs saved before it
        init_std=m.get("init_std", 0.02),  # configs saved before it: GPT-2's 0.02
        scaled_residual_init=m.get("scaled_residual_init", True),  # before it: GPT-2's
    ))


def _pad(ids: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros(size, np.int32)
    out[: len(ids)] = ids
    return out


def encode_example(
    record: dict, tokenizer, config: ml_collections.ConfigDict, *, segments: int | None = None,
    context_len: int | None = None,
) -> dict:
    """One record (with `input_ids` or `input` text, `question`, `target`) as arrays, the
    context padded to `context_len` tokens, or to whole `segments` (default: as few as hold
    it)."""
    segment_len = config.model.segment_len
    if "input_ids" in record:
        context = np.asarray(record["input_ids"], np.int32)
    else:
        text = record["input"]
        text = text.decode("utf-8") if isinstance(text, bytes) else text
        context = np.asarray(tokenizer.encode(text), np.int32)
    if context_len is None:
        if segments is None:
            segments = max(1, math.ceil(len(context) / segment_len))
        context_len = segments * segment_len
    if len(context) > context_len:
        raise ValueError(
            f"context of {len(context)} tokens does not fit the {context_len} tokens of "
            f"{segments or context_len / segment_len:g} segments of {segment_len}: raise the "
            "segment count"
        )
    question_text, target = (
        v.decode("utf-8") if isinstance(v, bytes) else str(v)
        for v in (record["question"], record["target"])
    )
    max_q, max_a = config.data.max_question_len, config.data.max_answer_len
    question = np.asarray(tokenizer.encode(question_text), np.int32)[-max_q:]
    answer = np.asarray([*tokenizer.encode(target), tokenizer.eos_id], np.int32)[:max_a]
    query = np.zeros(max_q + max_a, np.int32)
    loss_mask = np.zeros(max_q + max_a, np.float32)
    query[: len(question)] = question
    query[len(question) : len(question) + len(answer)] = answer
    loss_mask[len(question) : len(question) + len(answer)] = 1.0
    task = record["task"]
    task = task.decode("utf-8") if isinstance(task, bytes) else str(task)
    return {
        "context": _pad(context, context_len),
        "context_mask": np.arange(context_len) < len(context),
        "question": _pad(question, max_q),
        "question_length": np.int32(len(question)),
        "answer": _pad(answer, max_a),
        "query": query,
        "loss_mask": loss_mask,
        "task_id": np.int32(TASKS.index(task)),
    }


def collate(examples: list[dict]) -> dict:
    """Stacks examples field by field into a batch."""
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def decode_answer(ids, tokenizer) -> str:
    """Generated ids -> answer text, stopping at the first eos or padding."""
    out = []
    for i in np.asarray(ids).tolist():
        if i in (tokenizer.eos_id, tokenizer.pad_id):
            break
        out.append(i)
    return tokenizer.decode(out).strip()


class MixedLengths:
    """Record i from `shorter` when its row in the global batch (i % batch) is among the
    first `rows`, else from `own` (a grain data source; both streams share the seed, and
    each index is read from one of them only).

    A process reads records process_index, process_index + process_count, ... and batches
    them, so global batch j is records j*batch .. (j+1)*batch - 1 over all processes:
    exactly `rows` of its rows come from `shorter`."""

    def __init__(self, own, shorter, *, rows: int, batch: int):
        self.own, self.shorter, self.rows, self.batch = own, shorter, rows, batch

    def __len__(self) -> int:
        return len(self.own)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        return (self.shorter if index % self.batch < self.rows else self.own)[index]


class TrainData:
    """Training batches per curriculum stage, for one process of `process_count`."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        composer: Composer,
        *,
        process_index: int = 0,
        process_count: int = 1,
    ):
        batch = config.train.batch_size
        if batch % process_count:
            raise ValueError(
                f"train.batch_size={batch} is not divisible by {process_count} processes"
            )
        self.config = config
        self.composer = composer
        self.tasks = parse_tasks(config.data.tasks)
        self.process_index = process_index
        self.process_count = process_count
        self.local_batch = batch // process_count
        self.curriculum = Curriculum.from_config(config)

    def stage_lengths(self, stage: int) -> list[int]:
        """Context sizes in tokens drawn within a stage."""
        return list(self.curriculum.stage(stage).context_sizes)

    def source(self, stage: int) -> BabilongSource | MixedLengths:
        """The stage's record stream; with `curriculum.mixed_length_ratio`, the first
        `Stage.shorter_rows` rows of every global batch at the earlier stages' lengths."""
        shape = self.curriculum.stage(stage)
        own = self._source(stage, self.stage_lengths(stage), shape.size_weights or None)
        if not shape.shorter_rows:
            return own
        return MixedLengths(own, self._source(stage, list(shape.shorter_sizes)),
                            rows=shape.shorter_rows, batch=self.config.train.batch_size)

    def _source(self, stage: int, lengths: list[int],
                weights: tuple[float, ...] | None = None) -> BabilongSource:
        data = self.config.data
        shape = self.curriculum.stage(stage)
        return BabilongSource(
            self.composer,
            self.tasks,
            lengths,
            seed=data.seed * 1000 + stage,
            split="train",
            babi_source=data.babi_source,
            babi_root=data.babi_dir,
            num_records=STREAM_RECORDS,
            # configs saved before the option were trained with the synonyms
            synonyms=data.get("babi_synonyms", True),
            question_recency=data.get("question_recency"),
            story_questions=shape.story_questions,
            # a bare story (size 0) must fit its one segment (or the stage's context)
            max_tokens=shape.story_tokens,
            # same_length_batches: one size per global batch (records j*batch .. of batch j)
            length_group=self.config.train.batch_size if shape.size_per_batch else 1,
            length_weights=weights,  # curriculum.bare_share: bare stories at their share
        )

    def dataset(self, stage: int) -> grain.IterDataset:
        shape = self.curriculum.stage(stage)
        tokenizer = self.composer.tokenizer
        config = self.config

        def encode(record: dict) -> dict:
            # same_length_batches: padded to its batch's drawn size (the record's length; a
            # bare story to one segment), else to the stage's longest
            size = shape.padded_len(int(record["length"]))
            return encode_example(record, tokenizer, config, context_len=size)

        ds = grain.MapDataset.source(self.source(stage))
        ds = ds[self.process_index :: self.process_count]
        ds = ds.map(encode)
        ds = ds.batch(self.local_batch, drop_remainder=True, batch_fn=collate)
        iter_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
        if config.data.worker_count > 0:
            iter_ds = iter_ds.mp_prefetch(
                grain.MultiprocessingOptions(num_workers=config.data.worker_count)
            )
        return iter_ds

    def iterator(self, stage: int, state: dict | None = None):
        """A grain iterator of numpy batches; `state` from `.get_state()` resumes it."""
        self.curriculum.stage(stage)  # a stage out of range raises, naming the count
        iterator = iter(self.dataset(stage))
        if state is not None:
            iterator.set_state(state)
        return iterator
