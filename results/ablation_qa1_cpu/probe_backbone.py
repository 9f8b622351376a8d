"""Backbone probe: can the quickstart's backbone (no memory, one window of 160 tokens) learn
qa1's lookup at 0k? A plain causal LM (`RMT.lm_logits`) on simulated qa1 stories, batch 16,
AdamW with warm-up and cosine decay, seed 0; every EVERY steps, answer accuracy on 320
held-out simulated questions (simulator seed 7; the last-room shortcut answers ~60%).

    python results/ablation_qa1_cpu/probe_backbone.py MODE STEPS [LAYERS D POSITIONS LR EVERY]

MODE: 'answer' (story, question, answer: loss on the answer), 'dense' (the story with every
question of it and its answer in place: loss on every answer), 'lmdense' (the same, loss on
every token), 'hard' (as 'answer', but the question drawn among those the shortcut gets
wrong, when the story has one). Defaults: 2 layers, d 64, learned positions, lr 6e-4,
evaluation every 250 steps.
"""

import functools
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from babilong_tfds.babi_generator import GeneratedBabi  # noqa: E402
from babilong_tfds.tokenizer import get_tokenizer  # noqa: E402
from rmt_jax.core.config import ModelConfig  # noqa: E402
from rmt_jax.core.model import RMT  # noqa: E402

ARGS = sys.argv[1:] + [None] * 7
mode, steps = ARGS[0], int(ARGS[1])
layers, d = int(ARGS[2] or 2), int(ARGS[3] or 64)
positions, LR = ARGS[4] or "learned", float(ARGS[5] or 6e-4)
EVERY = int(ARGS[6] or 250)  # steps between held-out evaluations
tok = get_tokenizer("sentencepiece")
T, B = 160, 16
eos = tok.eos_id
GEN = {0: GeneratedBabi("qa1", 0), 7: GeneratedBabi("qa1", 7)}
enc = functools.lru_cache(None)(lambda s: tuple(tok.encode(s)))


def story_seq(seed, idx, rng):
    story = GEN[seed].story(idx)
    ids, mask = [], []
    prev = 0
    k = int(rng.integers(len(story)))
    if mode == "hard":  # a question the last-room shortcut gets wrong, when the story has one
        hard = [j for j, smp in enumerate(story)
                if smp.facts[-1].rstrip(".").split()[-1] != smp.answer]
        if hard:
            k = hard[int(rng.integers(len(hard)))]
    for j, smp in enumerate(story[:k + 1]):
        for f in smp.facts[prev:]:
            ids += list(enc(f))
            mask += [0] * (len(ids) - len(mask))
        prev = len(smp.facts)
        if mode in ("dense", "lmdense") or j == k:
            ids += list(enc(smp.question))
            mask += [0] * (len(ids) - len(mask))
            a = list(enc(smp.answer)) + [eos]
            ids += a
            mask += [1] * len(a)
    if mode.startswith("lm"):
        mask = [1] * len(ids)
    return ids[-T:], mask[-T:]


def batch(step, seed=0):
    rng = np.random.default_rng([seed, step])
    x = np.zeros((B, T), np.int32)
    m = np.zeros((B, T), np.float32)
    for b in range(B):
        ids, mk = story_seq(seed, int(rng.integers(1 << 40)), rng)
        x[b, :len(ids)] = ids
        m[b, :len(mk)] = mk
    return x, m


cfg = ModelConfig(layers=layers, d_model=d, heads=2, vocab_size=tok.vocab_size, segment_len=T,
                  mem_tokens=1, max_positions=T + 2, positions=positions)
model = RMT(cfg, rngs=nnx.Rngs(0))
sched = optax.warmup_cosine_decay_schedule(0, LR, 200, steps, LR / 10)
tx = optax.chain(optax.clip_by_global_norm(1.0),
                 optax.adamw(sched, 0.9, 0.99, weight_decay=0.01))
opt = nnx.Optimizer(model, tx, wrt=nnx.Param)


@nnx.jit
def train_step(model, opt, x, m):
    def lf(model):
        lg = model.lm_logits(x)[:, :-1]
        ce = optax.softmax_cross_entropy_with_integer_labels(lg, x[:, 1:])
        w = m[:, 1:]
        return (ce * w).sum() / w.sum()
    loss, g = nnx.value_and_grad(lf)(model)
    opt.update(model, g)
    return loss


@nnx.jit
def predict(model, x):
    return model.lm_logits(x).argmax(-1)


def evaluate(n=20):
    """Answer accuracy on n batches of held-out questions (the last question of a story)."""
    global mode
    saved, mode = mode, "answer"
    ok = tot = 0
    for s in range(n):
        x, m = batch(s, seed=7)
        p = np.asarray(predict(model, jnp.asarray(x)))
        for b in range(B):
            first = int(np.argmax(m[b]))
            ok += p[b, first - 1] == x[b, first]
            tot += 1
    mode = saved
    return ok / tot


t0 = time.time()
for step in range(1, steps + 1):
    x, m = batch(step)
    loss = train_step(model, opt, jnp.asarray(x), jnp.asarray(m))
    if step % EVERY == 0:
        print(f"{mode} L{layers} d{d} {positions} step {step} loss {float(loss):.3f} "
              f"heldout_acc {evaluate():.3f} {time.time() - t0:.0f}s", flush=True)
