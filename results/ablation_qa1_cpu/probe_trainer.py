"""Trainer probe: the trainer's own model, loss (`rmt_jax.core.answer.loss_fn`, in_context),
optimizer and train step on one-segment qa1 samples, fed from pre-made records so it runs
fast, with switches for what differs from the answer-only probe (probe_answer.py).

    python results/ablation_qa1_cpu/probe_trainer.py --length 0 --seg 128 [...]

Training records: `BabilongSource` (simulated qa1 stories in bAbI's wording, data seed 0,
train split) at `--length` context tokens (0: the bare story; > 0: the facts within book
text filling that many tokens), `--nrecords` of them, encoded into one segment of `--seg`
tokens less the question and answer slots (`--whole 1`, as the trainer's one-segment stage;
`--whole 0 --qlen 24 --alen 6`: the trainer before that, the question and answer after a
segment of context, in a second segment). Held-out: 1,000
records of the test split at length 0 and at `--length`, scored by the first answer token.

Switches: `--init S` (ModelConfig.init_std), `--rescale 1` (every matrix to std S, output
projections and positions included, as probe_answer.py does), `--mem N` memory tokens,
`--eos 0` (loss on the answer token alone).
"""

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from babilong_tfds.dataset import BabilongSource  # noqa: E402
from configs import quickstart  # noqa: E402
from rmt_jax import input_pipeline, train_state  # noqa: E402
from rmt_jax.core.answer import _in_context_loss  # noqa: E402
from rmt_jax.curriculum import Curriculum  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=2000)
p.add_argument("--every", type=int, default=500)
p.add_argument("--length", type=int, default=0)
p.add_argument("--seg", type=int, default=128)
p.add_argument("--init", type=float, default=0.125)
p.add_argument("--rescale", type=int, default=0)
p.add_argument("--mem", type=int, default=4)
p.add_argument("--heads", type=int, default=4)
p.add_argument("--positions", default="rope")
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--eos", type=int, default=1)
p.add_argument("--nrecords", type=int, default=20000)
p.add_argument("--whole", type=int, default=1)
p.add_argument("--qlen", type=int, default=12)
p.add_argument("--alen", type=int, default=4)
a = p.parse_args()
tag = " ".join(sys.argv[1:])

config = quickstart.get_config()
with config.unlocked():
    config.model.init_std = a.init
    config.model.positions = a.positions
    config.model.heads = a.heads
    config.model.segment_len = a.seg
    config.model.max_positions = a.seg + 3 * a.mem + 64
    config.model.mem_tokens = a.mem
    config.optim.learning_rate = a.lr
    config.optim.schedule = "constant"
    config.train.batch_size = a.batch
    config.train.num_steps = a.steps
    config.data.haystack_dir = str(ROOT.parent / "shared/data/haystack")
    config.data.babi_dir = str(ROOT.parent / "shared/data/babi")
    config.data.max_question_len = a.qlen
    config.data.max_answer_len = a.alen
    config.curriculum.segments = (1,)
    config.curriculum.whole_segments = bool(a.whole)
# the context a one-segment stage holds (with --whole 1 the question and answer end that
# segment; with 0 they follow the segment's context in a second one)
context_len = Curriculum.from_config(config).stage(0).context_len
composer = input_pipeline.make_composer(config)
tok = composer.tokenizer


def records(split, length, n, seed):
    src = BabilongSource(composer, ["qa1"], [length], seed=seed, split=split,
                         babi_source="generated", num_records=n)
    ex = [input_pipeline.encode_example(src[i], tok, config, context_len=context_len)
          for i in range(n)]
    batch = input_pipeline.collate(ex)
    if not a.eos:  # the answer token alone: eos out of the loss
        batch["loss_mask"] = np.where(np.cumsum(batch["loss_mask"], 1) > 1, 0,
                                      batch["loss_mask"]).astype(np.float32)
    return batch


t0 = time.time()
train = records("train", a.length, a.nrecords, 0)
held = {0: records("test", 0, 1000, 7)}
if a.length:
    held[a.length] = records("test", a.length, 1000, 7)
print(f"data {time.time() - t0:.0f}s", flush=True)

mcfg = input_pipeline.model_config(config, tok.vocab_size)
schedule = train_state.make_schedule(config)
tx = train_state.make_optimizer(config, schedule)
state = train_state.create_train_state(mcfg, tx, 0)
if a.rescale:
    def rescale(path, w):
        if w.ndim >= 2 and "memory" not in str(path):
            return w / (w.std() + 1e-12) * a.init
        return w
    state["params"] = jax.tree_util.tree_map_with_path(rescale, state["params"])
    state["opt_state"] = tx.init(state["params"])
graphdef = train_state.model_graphdef(mcfg)
step_fn = jax.jit(train_state.make_train_step(graphdef, tx), donate_argnums=0)


@jax.jit
def first_token(params, batch):
    model = nnx.merge(graphdef, params)
    hidden, answer, _ = _in_context_loss(model, batch, None)
    return model.logits(hidden[:, 0]).argmax(-1) == answer[:, 0]


def score(batch):
    ok = [np.asarray(first_token(state["params"], {k: v[s:s + 250] for k, v in batch.items()}))
          for s in range(0, len(batch["answer"]), 250)]
    return float(np.concatenate(ok).mean())


rng = np.random.default_rng(1)
t0, losses = time.time(), []
for step in range(1, a.steps + 1):
    idx = rng.integers(0, a.nrecords, a.batch)
    state, m = step_fn(state, {k: v[idx] for k, v in train.items()})
    losses.append(m["loss"])
    if step % a.every == 0:
        loss = np.mean([float(v) for v in losses[-a.every:]])
        accs = " ".join(f"acc@{k} {score(v):.3f}" for k, v in held.items())
        print(f"{tag} step {step} loss {loss:.3f} {accs} {time.time() - t0:.0f}s", flush=True)
