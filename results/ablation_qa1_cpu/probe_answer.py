"""Answer-only backbone probe: can the backbone alone (one window, no memory, no haystack)
learn qa1's lookup at 0k? Like probe_backbone.py, but the loss and logits are taken at the
answer position only, on pre-tokenized simulated stories, so it runs ~50 steps/s on 2 cores.

    python results/ablation_qa1_cpu/probe_answer.py [--layers 2 --d 64 --heads 4 ...]

Training: simulated qa1 stories (simulator seed 0, one random question each, `--nstories`
of them), batch `--batch`, AdamW with warm-up then constant or cosine decay, model seed 0.
Every `--every` steps: answer accuracy on 1,000 held-out simulated questions (simulator seed
7; answering the last room named gets ~60% of them).

`--init S` rescales every weight matrix and embedding to std S after initialisation (all
of them, output projections and positions included, unlike `ModelConfig.init_std`).
`--babilong 1`: training questions from `BabilongSource` at length 0, as the trainer
draws them. `--prefix N`: N learned memory vectors before the story (rescaled with the
rest), as an RMT segment reads them. `--seed S`: model seed S, batches from seed S + 1.
`--hard F`: a fraction F of training questions drawn among those the last-room shortcut gets
wrong. `--kmax K --kswitch N`: the first N steps on story prefixes of 1..K facts with a
question about a person in them. `--compact 1`: facts as 'Name room.' and the question as
'Name' (no verbs: the binding at a fixed offset, as in associative recall).
"""

import argparse
import functools
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from babilong_tfds.babi_generator import GeneratedBabi  # noqa: E402
from babilong_tfds.tokenizer import get_tokenizer  # noqa: E402
from rmt_jax.core.config import ModelConfig  # noqa: E402
from rmt_jax.core.model import RMT  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=3000)
p.add_argument("--layers", type=int, default=2)
p.add_argument("--d", type=int, default=64)
p.add_argument("--heads", type=int, default=2)
p.add_argument("--lr", type=float, default=6e-4)
p.add_argument("--batch", type=int, default=16)
p.add_argument("--positions", default="learned")
p.add_argument("--init", type=float, default=0.0, help="rescale weights to this std (0: keep)")
p.add_argument("--wd", type=float, default=0.01)
p.add_argument("--warmup", type=int, default=200)
p.add_argument("--every", type=int, default=500)
p.add_argument("--nstories", type=int, default=20000)
p.add_argument("--tokenizer", default="sentencepiece")
p.add_argument("--sched", default="cosine", help="cosine | const")
p.add_argument("--hard", type=float, default=0.0)
p.add_argument("--kmax", type=int, default=0)
p.add_argument("--kswitch", type=int, default=0)
p.add_argument("--compact", type=int, default=0)
p.add_argument("--prefix", type=int, default=0, help="learned memory vectors before the story")
p.add_argument("--babilong", type=int, default=0, help="training stories from BabilongSource")
p.add_argument("--seed", type=int, default=0, help="model init; batches draw from seed + 1")
a = p.parse_args()
tag = " ".join(sys.argv[1:])
T = 128
tok = get_tokenizer(a.tokenizer)
enc = functools.lru_cache(None)(lambda s: tuple(tok.encode(s)))


def make_short(seed, n, kmax):
    """Story prefixes of 1..kmax facts, a question about one of the people in them."""
    g = GeneratedBabi("qa1", seed)
    rng = np.random.default_rng(seed + 100)
    x, pos, y = np.zeros((n, T), np.int32), np.zeros(n, np.int32), np.zeros(n, np.int32)
    for i in range(n):
        facts = g.story(i)[-1].facts[:int(rng.integers(1, kmax + 1))]
        names = sorted({f.split()[0] for f in facts})
        name = names[int(rng.integers(len(names)))]
        answer = [f.rstrip(".").split()[-1] for f in facts if f.split()[0] == name][-1]
        ids = [t for f in facts for t in enc(f)] + list(enc(f"Where is {name}?"))
        x[i, :len(ids)], pos[i], y[i] = ids, len(ids) - 1, enc(answer)[0]
    return x, pos, y


def make(seed, n):
    """n questions, one per simulated story: tokens [n, T], answer position [n], answer [n]."""
    g = GeneratedBabi("qa1", seed)
    rng = np.random.default_rng(seed)
    x, pos, y = np.zeros((n, T), np.int32), np.zeros(n, np.int32), np.zeros(n, np.int32)
    for i in range(n):
        story = g.story(i)
        k = int(rng.integers(len(story)))
        if seed == 0 and rng.random() < a.hard:
            hard = [j for j, q in enumerate(story)
                    if q.facts[-1].rstrip(".").split()[-1] != q.answer]
            if hard:
                k = hard[int(rng.integers(len(hard)))]
        smp = story[k]
        if a.compact:
            words = [f.rstrip(".").split() for f in smp.facts]
            ids = ([t for w in words for t in enc(w[0] + " " + w[-1] + ".")]
                   + list(enc(smp.question.split()[-1])))
        else:
            ids = [t for f in smp.facts for t in enc(f)] + list(enc(smp.question))
        ids = ids[-(T - 1):]
        x[i, :len(ids)], pos[i], y[i] = ids, len(ids) - 1, enc(smp.answer)[0]
    return x, pos, y


def make_babilong(n):
    """n training questions as the trainer draws them: BabilongSource records at length 0."""
    from babilong_tfds.dataset import BabilongSource
    from configs import quickstart
    from rmt_jax import input_pipeline

    config = quickstart.get_config().unlock()
    root = Path(__file__).resolve().parents[3] / "shared/data"
    config.data.haystack_dir, config.data.babi_dir = str(root / "haystack"), str(root / "babi")
    src = BabilongSource(input_pipeline.make_composer(config), ["qa1"], [0], seed=0,
                         split="train", babi_source="generated", num_records=n)
    x, pos, y = np.zeros((n, T), np.int32), np.zeros(n, np.int32), np.zeros(n, np.int32)
    for i in range(n):
        r = src[i]
        ids = list(r["input_ids"]) + list(enc(r["question"]))
        x[i, :len(ids)], pos[i], y[i] = ids, len(ids) - 1, enc(r["target"])[0]
    return x, pos, y


t0 = time.time()
x_train, p_train, y_train = make_babilong(a.nstories) if a.babilong else make(0, a.nstories)
x_test, p_test, y_test = make(7, 1000)
print(f"data {time.time() - t0:.0f}s maxlen {p_train.max() + 1}", flush=True)
T = int(max(p_train.max(), p_test.max())) + 2
x_train, x_test = x_train[:, :T], x_test[:, :T]

cfg = ModelConfig(layers=a.layers, d_model=a.d, heads=a.heads, vocab_size=tok.vocab_size,
                  segment_len=T, mem_tokens=max(1, a.prefix),
                  max_positions=T + 2 + 2 * a.prefix, positions=a.positions)
model = RMT(cfg, rngs=nnx.Rngs(a.seed))
if a.init:
    def rescale(path, w):
        if w.ndim >= 2 and ("memory" not in str(path) or a.prefix):
            return w / (w.std() + 1e-12) * a.init
        return w
    nnx.update(model, jax.tree_util.tree_map_with_path(rescale, nnx.state(model, nnx.Param)))
if a.sched == "cosine":
    sched = optax.warmup_cosine_decay_schedule(0, a.lr, a.warmup, a.steps, a.lr / 10)
else:
    sched = optax.join_schedules(
        [optax.linear_schedule(0, a.lr, a.warmup), optax.constant_schedule(a.lr)], [a.warmup])
tx = optax.chain(optax.clip_by_global_norm(1.0),
                 optax.adamw(sched, 0.9, 0.99, weight_decay=a.wd))
opt = nnx.Optimizer(model, tx, wrt=nnx.Param)


def answer_logits(model, x, pos):
    emb = model.embed(x)
    if a.prefix:  # the read memory in front, as the RMT's segments have it
        emb = jnp.concatenate([model.initial_memory(x.shape[0]), emb], axis=1)
    h, _ = model.transformer(emb)  # [b, t, d]
    h = h[:, a.prefix:]
    return model.logits(jnp.take_along_axis(h, pos[:, None, None], axis=1)[:, 0])  # [b, V]


@nnx.jit
def train_step(model, opt, x, pos, y):
    def loss_fn(model):
        lg = answer_logits(model, x, pos)
        return optax.softmax_cross_entropy_with_integer_labels(lg, y).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss


@nnx.jit
def predict(model, x, pos):
    return answer_logits(model, x, pos).argmax(-1)


def evaluate():
    ok = 0
    for s in range(0, 1000, 250):
        pred = np.asarray(predict(model, x_test[s:s + 250], p_test[s:s + 250]))
        ok += int((pred == y_test[s:s + 250]).sum())
    return ok / 1000


if a.kmax:
    x_short, p_short, y_short = make_short(3, a.nstories, a.kmax)
    x_short = x_short[:, :T]
rng = np.random.default_rng(a.seed + 1)
t0 = time.time()
losses = []
for step in range(1, a.steps + 1):
    idx = rng.integers(0, a.nstories, a.batch)
    short = a.kmax and step <= a.kswitch
    batch = ((x_short[idx], p_short[idx], y_short[idx]) if short
             else (x_train[idx], p_train[idx], y_train[idx]))
    losses.append(train_step(model, opt, *batch))
    if step % a.every == 0:
        recent = np.mean([float(v) for v in losses[-a.every:]])
        print(f"{tag}{' SHORT' if short else ''} step {step} loss {recent:.3f} "
              f"acc {evaluate():.3f} {time.time() - t0:.0f}s", flush=True)
