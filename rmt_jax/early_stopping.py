"""Early stopping of curriculum stages (`config.curriculum.advance_on='heldout'`): the
held-out set of a stage, its score, and the stage's best state.

Held-out set (`Heldout.examples`): `curriculum.heldout_samples` samples at the stage's own
context sizes (`Stage.context_sizes`), made once per stage and kept. On BABILong they are
stories of the bAbI simulator, never the test files (training never sees a test question),
composed into the haystack as training samples are; they come from the simulator's 'test'
stream, whose seeds no training stream draws (training draws 'train'), with a seed of their
own per stage (`heldout_seed`, never evaluation's 0). `Heldout.check` makes one sample of
every stage before training starts, so a stage too short for any story stops the run with
a ValueError that names it. On synthetic data: batches of another data seed at the stage.

Score (`Heldout.score`): greedy answers as evaluation decodes them (`evaluate_lib.predict`),
scored per task by the evaluation's `babilong_tfds.metric.score_cell`: exact match, which
the curriculum advances on, and the official label-set accuracy, means over all samples.
Synthetic data: exact match of the answer tokens (`scoring.exact_match_tokens`).

Best state (`StageBest`): the parameters and optimizer state of the stage's best evaluation,
in workdir/stage_best/<step>/ (orbax: params, train, meta; the newest one kept). A stage
change restores it from there, in an uninterrupted run as in a resumed one, so both carry on
from the same bits. The best step and score are in the curriculum state of every checkpoint.
"""

from __future__ import annotations

import math
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from babilong_tfds import metric
from babilong_tfds.dataset import BabilongSource
from babilong_tfds.tasks import parse_tasks
from rmt_jax import files
from rmt_jax.curriculum import Curriculum

STAGE_BEST_DIR = "stage_best"
# Synthetic held-out batches: data.seed plus this (the eval batches use + 7919).
SYNTHETIC_SEED_OFFSET = 104_729


def heldout_seed(config: ml_collections.ConfigDict, stage: int) -> int:
    """The story seed of a stage's held-out set: >= 1 (evaluation's 'generated' source uses 0),
    and one per (data.seed, stage) as the training streams have."""
    return 1 + config.data.seed * 1000 + stage


class Heldout:
    """The held-out sets of a run's stages (made on first use, one per stage) and their score.

    composer and tokenizer: those of the run (None on synthetic data)."""

    def __init__(self, config: ml_collections.ConfigDict, curriculum: Curriculum, *,
                 composer=None, tokenizer=None):
        self.config = config
        self.curriculum = curriculum
        self.composer = composer
        self.tokenizer = tokenizer
        self.synthetic = bool(config.data.synthetic)
        self._sets: dict[int, list] = {}
        self._records: dict[int, list[dict]] = {}

    def _source(self, stage: int, sizes: list[int] | None = None) -> BabilongSource:
        sizes = sizes or list(self.curriculum.stage(stage).context_sizes)
        return BabilongSource(
            self.composer, parse_tasks(self.config.data.tasks), sizes,
            seed=heldout_seed(self.config, stage),
            split="test", babi_source="generated", num_records=self.curriculum.heldout_samples,
            synonyms=self.config.data.get("babi_synonyms", True),
            story_questions=self.curriculum.stage(stage).story_questions,
            max_tokens=self.curriculum.stage(stage).story_tokens)

    def _record(self, source: BabilongSource, stage: int, index: int) -> dict:
        try:
            return source[index]
        except ValueError as error:  # CompositionError: no story fits the stage's contexts
            sizes = self.curriculum.stage(stage).context_sizes
            raise ValueError(
                f"curriculum stage {stage} ({self.curriculum.segments[stage]} segments, "
                f"contexts of {', '.join(map(str, sizes))} tokens) cannot hold a held-out set "
                f"({error}): start the curriculum with more segments (curriculum.segments) or "
                "use advance_on='steps'") from None

    def check(self) -> None:
        """Makes one held-out sample of every stage at its shortest context size: a
        ValueError naming the first stage whose set cannot be made (before training)."""
        if self.synthetic:
            return
        for stage in range(self.curriculum.num_stages):
            shortest = min(self.curriculum.stage(stage).context_sizes)
            self._record(self._source(stage, [shortest]), stage, 0)

    def examples(self, stage: int) -> list:
        """The stage's held-out set: encoded examples (BABILong) or numpy batches (synthetic),
        made once."""
        if stage not in self._sets:
            if self.synthetic:
                self._sets[stage] = self._synthetic_batches(stage)
            else:
                from rmt_jax import evaluate_lib

                source = self._source(stage)
                records = [self._record(source, stage, i) for i in range(len(source))]
                self._records[stage] = [{k: r[k] for k in ("question", "target", "task")}
                                        for r in records]
                self._sets[stage] = evaluate_lib.encode_records(records, self.tokenizer,
                                                                self.config)
        return self._sets[stage]

    def _synthetic_batches(self, stage: int) -> list[dict]:
        from rmt_jax.synthetic_data import SyntheticData

        config = self.config.copy_and_resolve_references()
        config.data.seed = self.config.data.seed + SYNTHETIC_SEED_OFFSET
        iterator = SyntheticData(config).iterator(stage)
        count = math.ceil(self.curriculum.heldout_samples / config.train.batch_size)
        return [next(iterator) for _ in range(count)]

    def score(self, model, stage: int) -> dict[str, float]:
        """{'exact_match', 'accuracy' (label set; BABILong only), 'samples'} of `model`'s
        greedy answers on the stage's held-out set."""
        from rmt_jax import evaluate_lib

        examples = self.examples(stage)
        max_new_tokens = self.config.data.max_answer_len
        if self.synthetic:
            from rmt_jax.scoring import exact_match_tokens

            n = self.curriculum.heldout_samples
            predicted = np.concatenate([evaluate_lib.answer_batch(
                model, b, max_new_tokens=max_new_tokens) for b in examples])[:n]
            answers = np.concatenate([b["answer"] for b in examples])[:n]
            return {"exact_match": float(exact_match_tokens(predicted, answers).mean()),
                    "samples": float(n)}
        ids = evaluate_lib.predict(model, examples, max_new_tokens=max_new_tokens,
                                   batch_size=min(self.config.eval.batch_size, len(examples)),
                                   streaming=False)
        from rmt_jax.input_pipeline import decode_answer

        by_task: dict[str, tuple[list, list, list]] = {}
        for record, answer in zip(self._records[stage], ids, strict=True):
            task = record["task"]
            targets, outputs, questions = by_task.setdefault(task, ([], [], []))
            targets.append(str(record["target"]))
            outputs.append(decode_answer(answer, self.tokenizer))
            questions.append(str(record["question"]))
        cells = [metric.score_cell(*columns, task)[0] for task, columns in by_task.items()]
        total = sum(c["count"] for c in cells)
        return {"exact_match": sum(c["exact_match"] * c["count"] for c in cells) / total,
                "accuracy": sum(c["accuracy"] * c["count"] for c in cells) / total,
                "samples": float(total)}


class StageBest:
    """The best state of the current stage in workdir/stage_best/<step>/ (the newest kept)."""

    def __init__(self, workdir: str | os.PathLike, *, async_save: bool = True):
        self.directory = files.run_path(workdir) / STAGE_BEST_DIR
        self.manager = ocp.CheckpointManager(
            self.directory, item_names=("params", "train", "meta"),
            options=ocp.CheckpointManagerOptions(max_to_keep=1,
                                                 enable_async_checkpointing=async_save))

    def save(self, step: int, params, train, meta: dict) -> None:
        if step in self.manager.all_steps():  # an evaluation done again after a resume
            return
        self.manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), train=ocp.args.StandardSave(train),
            meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, step: int, abstract_params, abstract_train) -> tuple:
        """(params, train) saved at `step`, with the shardings of the abstract trees."""
        self.manager.wait_until_finished()
        if step not in self.manager.all_steps():
            raise ValueError(
                f"the best state of this curriculum stage (step {step}) is not in "
                f"{self.directory} (it holds steps {sorted(self.manager.all_steps())}): the "
                "workdir resumed from an older checkpoint than the stage's best; train again "
                "from that stage in a new --workdir")
        out = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(_abstract(abstract_params)),
            train=ocp.args.StandardRestore(_abstract(abstract_train))))
        return out["params"], out["train"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)

