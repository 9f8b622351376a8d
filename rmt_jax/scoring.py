"""Scoring a model's answers during training: the train log, the held-out set, evaluation.

- `MODEL_INPUTS`: the batch fields the model's loss reads; the other fields of a batch
  (`task_id`, ...) are for scoring answers.
- `exact_match_tokens(predicted, answer)`: [B] bool, a greedy answer [B, T] repeats the
  target's tokens up to and with its end token (`rmt_jax.early_stopping` scores synthetic
  held-out sets with it).
- `answer_metrics(predicted, batch, tokenizer)`: exact match and, given a tokenizer, the
  official label-set accuracy (`babilong_tfds.metric`) of greedy answers to a batch.
- `evaluate(...)`: the periodic evaluation of the training loop: its scalars (eval/*), the
  score that picks the best checkpoint, and on BABILong the full results of
  `rmt_jax.evaluate_lib.evaluate_model`.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from babilong_tfds import metric
from babilong_tfds.tasks import TASKS
from rmt_jax import input_pipeline, sharding
from rmt_jax.run_control import stop_point
from rmt_jax.synthetic_data import SyntheticData

MODEL_INPUTS = ("context", "context_mask", "query", "loss_mask", "answer", "question",
                "question_length")  # loss_fn reads these


def exact_match_tokens(predicted: np.ndarray, answer: np.ndarray) -> np.ndarray:
    """[B] bool: the prediction repeats the target's tokens up to and with its end token."""
    lengths = (answer != 0).sum(-1)
    positions = np.arange(answer.shape[1])[None, :]
    return np.all((predicted == answer) | (positions >= lengths[:, None]), axis=-1)


def answer_metrics(predicted: np.ndarray, batch: dict, tokenizer=None) -> dict[str, float]:
    """Exact match of greedy answers, and the official label-set accuracy given a tokenizer."""
    rows = len(predicted)
    out = {"exact_match": float(exact_match_tokens(predicted, batch["answer"][:rows]).mean())}
    if tokenizer is not None:
        correct = []
        for i in range(rows):
            question = tokenizer.decode(batch["question"][i, : batch["question_length"][i]])
            target = input_pipeline.decode_answer(batch["answer"][i], tokenizer)
            output = input_pipeline.decode_answer(predicted[i], tokenizer)
            correct.append(metric.label_score(target, output, question,
                                              TASKS[int(batch["task_id"][i])]))
        out["label_accuracy"] = float(np.mean(correct))
    return out


def evaluate(config, params, graphdef, *, composer, tokenizer, batch_sharding,
             eval_step, answer_fn) -> tuple[dict[str, float], float, dict | None]:
    """Eval metrics, the score that picks the best checkpoint (higher is better), and the
    full results of `evaluate_lib.evaluate_model` on real data (None on synthetic data)."""
    if not config.data.synthetic:
        from rmt_jax import evaluate_lib

        if jax.process_count() > 1:
            # Every process evaluates on a full local copy (evaluate_model runs its own jit
            # over host arrays); only process 0 writes the results.
            replicated = NamedSharding(batch_sharding.mesh, P())
            params = jax.jit(lambda p: p, out_shardings=replicated)(params)
        out = evaluate_lib.evaluate_model(
            nnx.merge(graphdef, params), config, composer, tokenizer, tasks=config.data.tasks,
            lengths=config.eval.lengths, num_samples=config.eval.num_samples,
            source=config.eval.source, batch_size=config.eval.batch_size)
        scalars = {f"eval/{task}/{length}/{name}": cell[name]
                   for task, by_length in out["results"].items()
                   for length, cell in by_length.items() for name in ("accuracy", "exact_match")}
        accuracy = float(np.mean([cell["accuracy"] for by_length in out["results"].values()
                                  for cell in by_length.values()]))
        scalars["eval/accuracy"] = accuracy
        return scalars, accuracy, out
    # Synthetic: held-out batches (another data seed) of the longest stage.
    held_out = config.copy_and_resolve_references()
    held_out.data.seed = config.data.seed + 7919
    data = SyntheticData(held_out, process_index=jax.process_index(),
                         process_count=jax.process_count())
    iterator = data.iterator(data.curriculum.num_stages - 1)
    batches = max(1, config.eval.num_samples // config.train.batch_size)
    sums: dict[str, float] = {}
    for _ in range(batches):
        stop_point()  # SIGTERM: stop here, between batches (run_control)
        batch = next(iterator)
        device_batch = sharding.global_batch(batch, batch_sharding)
        scores = jax.device_get(eval_step(params, {k: device_batch[k] for k in MODEL_INPUTS}))
        predicted = multihost_utils.global_array_to_host_local_array(
            answer_fn(params, device_batch), batch_sharding.mesh, P("data"))
        scores.update(answer_metrics(np.asarray(predicted), batch))
        for k, v in scores.items():
            sums[k] = sums.get(k, 0.0) + float(v) / batches
    return {f"eval/{k}": v for k, v in sums.items()}, sums["exact_match"], None
