"""Random-token batches with the shapes of `input_pipeline.TrainData` (tests, throughput).

The task: copy the first context token. The context holds random tokens of
`config.model.vocab_size`, whole segments of them (1..segments[stage] per sample with
`curriculum.mix_shorter`; one count per batch, the batch that wide, with
`curriculum.same_length_batches`; `curriculum.mixed_length_ratio`: a share of the rows at
the earlier stages' segment counts); the question is random tokens; the answer is the first
context token then the end-of-answer token `EOS_ID`. Learning it needs the memory to carry one
token over every segment, so the loss falls and long contexts are harder, as on BABILong.

Batch i of a stage depends on (data.seed, stage, i, process_index) alone, and the iterator
state is {'index': i}: the same contract as `TrainData` (byte-identical after set_state).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from rmt_jax.curriculum import Curriculum

PAD_ID, EOS_ID = 0, 1
FIRST_TOKEN = 2  # random tokens are drawn from FIRST_TOKEN..vocab_size-1


class SyntheticIterator:
    def __init__(self, data: SyntheticData, stage: int):
        self.data, self.stage, self.index = data, stage, 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = self.data.batch(self.stage, self.index)
        self.index += 1
        return batch

    def get_state(self) -> dict:
        return {"index": self.index}

    def set_state(self, state: dict) -> None:
        self.index = int(state["index"])


class SyntheticData:
    """`TrainData`'s interface over synthetic batches."""

    def __init__(self, config: ml_collections.ConfigDict, *, process_index: int = 0,
                 process_count: int = 1):
        if config.model.vocab_size <= FIRST_TOKEN:
            raise ValueError(f"synthetic data needs config.model.vocab_size > {FIRST_TOKEN} "
                             f"(got {config.model.vocab_size}): there is no tokenizer to ask")
        if config.train.batch_size % process_count:
            raise ValueError(f"train.batch_size={config.train.batch_size} is not divisible by "
                             f"{process_count} processes")
        self.config = config
        self.curriculum = Curriculum.from_config(config)
        self.process_index = process_index
        self.process_count = process_count
        self.local_batch = config.train.batch_size // process_count

    def batch(self, stage: int, index: int) -> dict:
        cfg = self.config
        seg_len, vocab = cfg.model.segment_len, cfg.model.vocab_size
        shape = self.curriculum.stage(stage)
        segments = shape.segments  # a fraction: one segment
        reserved = self.curriculum.reserved  # question and answer slots in the last segment
        max_q, max_a = cfg.data.max_question_len, cfg.data.max_answer_len
        b = self.local_batch
        rng = np.random.default_rng([cfg.data.seed, stage, index, self.process_index])
        context_len = shape.context_len
        if shape.size_per_batch:  # one count for the global batch: every process draws it
            segments = int(np.random.default_rng([cfg.data.seed, stage, index, 1 << 20])
                           .integers(1, segments + 1))
            context_len = segments * seg_len - reserved
        context = rng.integers(FIRST_TOKEN, vocab, (b, context_len), dtype=np.int32)
        counts = (rng.integers(1, segments + 1, b) if self.curriculum.mix_shorter
                  and not shape.size_per_batch else np.full(b, segments))
        if shape.shorter_rows:  # mixed_length_ratio: these rows of the global batch
            rows = np.arange(b) * self.process_count + self.process_index < shape.shorter_rows
            shorter = np.array([max(1, (size + reserved) // seg_len)
                                for size in shape.shorter_sizes])
            counts = np.where(rows, rng.choice(shorter, b), counts)
        context_mask = (np.arange(context_len)[None, :]
                        < (counts * seg_len - reserved)[:, None])
        context = np.where(context_mask, context, PAD_ID).astype(np.int32)
        question_length = rng.integers(1, max_q + 1, b).astype(np.int32)
        question = rng.integers(FIRST_TOKEN, vocab, (b, max_q), dtype=np.int32)
        question = np.where(np.arange(max_q)[None, :] < question_length[:, None], question,
                            PAD_ID).astype(np.int32)
        answer = np.zeros((b, max_a), np.int32)
        answer[:, 0] = context[:, 0]
        answer[:, min(1, max_a - 1)] = EOS_ID if max_a > 1 else answer[:, 0]
        query = np.zeros((b, max_q + max_a), np.int32)
        loss_mask = np.zeros((b, max_q + max_a), np.float32)
        for row in range(b):
            q = question_length[row]
            query[row, :q] = question[row, :q]
            query[row, q:q + max_a] = answer[row]
            loss_mask[row, q:q + max_a] = 1.0
        return {"context": context, "context_mask": context_mask, "question": question,
                "question_length": question_length, "answer": answer, "query": query,
                "loss_mask": loss_mask, "task_id": np.zeros(b, np.int32)}

    def iterator(self, stage: int, state: dict | None = None) -> SyntheticIterator:
        self.curriculum.stage(stage)  # a stage out of range raises, naming the count
        iterator = SyntheticIterator(self, stage)
        if state is not None:
            iterator.set_state(state)
        return iterator
