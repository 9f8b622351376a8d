r"""Throughput of the RMT recurrence: inference, a full training step, and streaming.

  python -m launch.benchmark_rmt --preset=tiny --mode=infer --batch=8 --segments=8 \
      --out=results/benchmark_rmt_cpu.json
  python -m launch.benchmark_rmt --preset=tiny --mode=train --peer   # also runs the peer
  python -m launch.benchmark_rmt --preset=tiny --mode=stream --stream_tokens=10000000 \
      --out=results/rmt_stream_cpu.json

Each run prints a table row and one JSON line, and appends the record to --out (a JSON list).

  infer   scan over the segments, then the answer segment with the LM head at its last
          position only (no LM head per segment).
  train   one AdamW step (clip 1.0) with full back-propagation through every segment; model
          and optimizer state are donated. The loss covers the query's last 4 tokens and, as
          in the trainer, the LM head runs at those 4 positions only.
  stream  `stream_infer` over --stream_tokens host tokens in chunks of --chunk_segments;
          reports time and the host RSS along the stream (flat for RMT).

Model FLOPs are counted analytically (matmuls only): forward = 2 * block params * positions
+ 4 * layers * t^2 * d per segment of t positions (memory included) + retrieval + the LM head
where it is computed; a training step is 3x forward. The fraction is of the bf16 matmul
peak measured in the same run with one large matmul. Peak memory is the device's
`peak_bytes_in_use` where `memory_stats()` exists, else the host's peak RSS (`memory_kind`).

  --profile_dir=DIR traces one more call with `jax.profiler` (Perfetto trace under DIR) and
  adds `profile` to the record: the device's busy fraction over the call and its costliest
  ops (`launch.trace_summary`). --scan_unroll=k runs k segments per loop iteration; XLA_FLAGS
  from the environment is recorded as `xla_flags`.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import psutil
from absl import app, flags
from flax import nnx

from launch import trace_summary
from launch.outputs import check_output_file
from rmt_jax import (
    PRESETS,
    RMT,
    count_params,
    get_config,
    host_memory,
    loss_fn,
    scan_segments,
    stream_infer,
)
from rmt_jax.files import atomic_write

FLAGS = flags.FLAGS
flags.DEFINE_enum("preset", "tiny", list(PRESETS), "model size (rmt_jax.core.config.PRESETS)")
flags.DEFINE_enum("mode", "infer", ["infer", "train", "stream"], "what to time")
flags.DEFINE_integer("batch", 1, "batch size")
flags.DEFINE_integer("segments", 8, "segments per sample (infer, train)")
flags.DEFINE_integer("segment_len", 0, "tokens per segment; 0 = preset")
flags.DEFINE_integer("mem_tokens", 0, "memory tokens; 0 = preset")
flags.DEFINE_enum("dtype", "bf16", ["bf16", "fp32"], "compute dtype")
flags.DEFINE_enum("param_dtype", "fp32", ["bf16", "fp32"], "parameter dtype")
flags.DEFINE_enum("memory", "rmt", ["rmt", "rmt_r", "armt"],
                  "memory variant: RMT, RMT-R (self-retrieval) or ARMT (associative)")
flags.DEFINE_bool("retrieval", False, "RMT-R: the same as --memory=rmt_r")
flags.DEFINE_integer("d_mem", 0, "ARMT's key width; 0 = d_model / 4")
flags.DEFINE_string("attention_impl", None, "None ('einsum' on a CPU, else JAX picks), "
                    "'einsum', 'xla' or 'cudnn'")
flags.DEFINE_string("remat_policy", "none", "remat policy of the segment step (train)")
flags.DEFINE_integer("scan_unroll", 1, "segments per iteration of the scan loop")
flags.DEFINE_integer("bptt_segments", 0, "train: back-propagate through the last k segments "
                     "only (the others run forward only); 0 = all")
flags.DEFINE_string("profile_dir", None, "trace one more call with jax.profiler into this folder "
                    "and add launch.trace_summary's figures to the record")
flags.DEFINE_integer("query_len", 16, "question+answer tokens in the answer segment")
flags.DEFINE_integer("repeats", 3, "timed repeats (median reported)")
flags.DEFINE_integer("stream_tokens", 1_000_000, "tokens to stream (mode=stream)")
flags.DEFINE_integer("chunk_segments", 256, "segments per jitted chunk (mode=stream)")
flags.DEFINE_integer("peak_matmul_n", 0, "size of the bf16 peak matmul; 0 = 8192 GPU, 1024 CPU")
flags.DEFINE_bool("peer", False, "also run the peer PyTorch benchmark with the same shape")
flags.DEFINE_string("peer_script", "../shared/bench/peer_rmt_torch.py", "peer script path")
flags.DEFINE_enum("peer_head", "auto", ["auto", "0", "1"],
                  "the peer's LM head: 1 on every segment (the official code), 0 none; auto: 1 "
                  "for train, 0 for infer")
flags.DEFINE_string("out", None, "JSON file to append the records to")
flags.DEFINE_string("tag", "", "a name for this run, kept in its record")

DTYPE_NAMES = {"bf16": "bfloat16", "fp32": "float32"}
ANSWER_SLOTS = 4  # train: answer tokens at the end of the query, where the loss and LM head go


def build_config():
    memory = "rmt_r" if FLAGS.retrieval else FLAGS.memory
    if FLAGS.retrieval and FLAGS.memory not in ("rmt", "rmt_r"):
        raise ValueError(f"--retrieval is RMT-R but --memory={FLAGS.memory}: drop one")
    if FLAGS.d_mem and memory != "armt":
        raise ValueError(f"--d_mem={FLAGS.d_mem} is ARMT's key width but the memory is "
                         f"{memory}: add --memory=armt or drop --d_mem")
    preset = get_config(FLAGS.preset)
    d_mem = (FLAGS.d_mem or max(1, preset.d_model // 4)) if memory == "armt" else 0
    overrides = dict(dtype=DTYPE_NAMES[FLAGS.dtype], param_dtype=DTYPE_NAMES[FLAGS.param_dtype],
                     memory=memory, d_mem=d_mem, attention_impl=FLAGS.attention_impl,
                     remat_policy=FLAGS.remat_policy, scan_unroll=FLAGS.scan_unroll,
                     bptt_segments=FLAGS.bptt_segments or None)
    if FLAGS.segment_len:
        overrides["segment_len"] = FLAGS.segment_len
    if FLAGS.mem_tokens:
        overrides["mem_tokens"] = FLAGS.mem_tokens
    return get_config(FLAGS.preset, **overrides)


# -- measurements ---------------------------------------------------------------------------
def peak_memory() -> tuple[float, str]:
    """(GiB, kind): device peak where the backend reports it, else host peak RSS."""
    stats = jax.devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**30, "device_peak_bytes_in_use"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "host_peak_rss"


def measure_bf16_peak(n: int, repeats: int = 3) -> float:
    """FLOP/s of one n x n x n bf16 matmul, best of `repeats`."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    matmul = jax.jit(lambda a, b: a @ b)
    matmul(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def forward_flops(cfg, model, batch, segments, query_len, head_positions) -> float:
    """Matmul FLOPs of one forward pass over `segments` segments and the answer segment."""
    block_params = count_params(model, exclude_embeddings=True)
    for extra in (model.retrieval, model.associative):
        if extra is not None:
            block_params -= count_params(extra)
    d, n = cfg.d_model, cfg.mem_tokens

    def segment(t):
        return 2 * block_params * t + 4 * cfg.layers * t * t * d

    flops = segments * segment(cfg.segment_positions) + segment(cfg.read_tokens + query_len)
    flops += 2 * d * cfg.vocab_size * head_positions
    if cfg.retrieval:  # per read: q, o, MLP on n tokens, scores and values over the buffer;
        per_read = 2 * 2 * n * d * d + 2 * 2 * n * d * 4 * d  # per write: k, v of n tokens
        per_read += 4 * n * segments * n * d
        flops += (segments + 1) * per_read + segments * 2 * 2 * n * d * d
    if cfg.memory == "armt":  # per layer: a read at every position (W_q, then A), a write of
        k = cfg.d_key        # n tokens (W_k, W_v, the delta's A k, the outer products)
        per_read = 2 * d * cfg.d_mem + 2 * k * d + 2 * k
        per_write = n * (2 * d * cfg.d_mem + 2 * d * d + 4 * k * d + 2 * d)
        reads = segments * cfg.segment_positions + cfg.read_tokens + query_len
        flops += cfg.layers * (reads * per_read + segments * per_write)
    return float(flops * batch)


def timed(compiled, args, repeats, rebind=None):
    """(median, fastest) seconds of `compiled(*args)`; `rebind` threads donated outputs back
    into args. The fastest call is the steadier figure on a CPU shared with other work.

    With --profile_dir, one more call after the timed ones runs under `jax.profiler.trace`.
    """
    times = []
    out = None
    for _ in range(repeats + 1):  # the first call warms up
        start = time.perf_counter()
        out = compiled(*args)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - start)
        if rebind is not None:
            args = rebind(args, out)
    if FLAGS.profile_dir:
        with jax.profiler.trace(FLAGS.profile_dir, create_perfetto_trace=True):
            jax.block_until_ready(compiled(*args))
    return (statistics.median(times[1:]), min(times[1:])), out


# -- modes ----------------------------------------------------------------------------------
def make_batch(cfg, rng):
    context = rng.integers(0, cfg.vocab_size, (FLAGS.batch, FLAGS.segments * cfg.segment_len))
    query = rng.integers(0, cfg.vocab_size, (FLAGS.batch, FLAGS.query_len))
    loss_mask = np.zeros(query.shape, np.float32)
    loss_mask[:, -ANSWER_SLOTS:] = 1.0
    # `answer` tells loss_fn where the answer lies, so the LM head runs at those slots only,
    # as in the trainer's batches (rmt_jax.input_pipeline)
    return dict(context=context.astype(np.int32), query=query.astype(np.int32),
                loss_mask=loss_mask, answer=query[:, -ANSWER_SLOTS:].astype(np.int32))


def run_infer(cfg, model, batch):
    graphdef, params = nnx.split(model)

    def infer(params, context, question):
        model = nnx.merge(graphdef, params)
        state, _ = scan_segments(model, context)
        read = model.read_memory(state.memory, state.buffer, state.buffer_valid)
        hidden = model.answer_hidden(read, question, assoc=state.assoc)
        return model.logits(hidden[:, -1])  # the LM head at the answer position only

    args = (params, batch["context"], batch["query"])
    start = time.perf_counter()
    compiled = jax.jit(infer).lower(*args).compile()
    compile_s = time.perf_counter() - start
    seconds, _ = timed(compiled, args, FLAGS.repeats)
    return seconds, compile_s, forward_flops(cfg, model, FLAGS.batch, FLAGS.segments,
                                             FLAGS.query_len, 1)


def run_train(cfg, model, batch):
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-5, weight_decay=0.01))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    def train_step(state, batch):
        model, optimizer = nnx.merge(graphdef, state)
        (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, batch)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    start = time.perf_counter()
    compiled = jax.jit(train_step, donate_argnums=0).lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    seconds, _ = timed(compiled, (state, batch), FLAGS.repeats,
                       rebind=lambda args, out: (out[0], args[1]))
    flops = 3 * forward_flops(cfg, model, FLAGS.batch, FLAGS.segments, FLAGS.query_len,
                              ANSWER_SLOTS)
    return seconds, compile_s, flops


def run_stream(cfg, model):
    """Streams random tokens from a host generator; records the RSS as the stream advances."""
    piece = 1 << 20
    rss = []
    process = psutil.Process()

    def pieces():
        rng = np.random.default_rng(0)
        for start in range(0, FLAGS.stream_tokens, piece):
            rss.append(process.memory_info().rss / 2**20)
            size = min(piece, FLAGS.stream_tokens - start)
            yield rng.integers(0, cfg.vocab_size, (FLAGS.batch, size), dtype=np.int32)

    start = time.perf_counter()
    state = stream_infer(model, pieces(), chunk_segments=FLAGS.chunk_segments)
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    rss.append(process.memory_info().rss / 2**20)
    segments = int(state.step)
    peak_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return dict(seconds=round(seconds, 2), stream_tokens=FLAGS.stream_tokens,
                chunk_segments=FLAGS.chunk_segments, segment_slots=segments,
                tokens_per_s=round(FLAGS.batch * FLAGS.stream_tokens / seconds, 1),
                rss_mb_first_piece=round(rss[0], 1), rss_mb_second_piece=round(rss[1], 1),
                rss_mb_last=round(rss[-1], 1), rss_mb_max_along_stream=round(max(rss), 1),
                host_peak_rss_mb=round(peak_rss_kib / 1024, 1),
                carried_state_bytes=int(sum(x.nbytes for x in jax.tree.leaves(state))),
                note="time includes compiling the chunk function: once for RMT, once per "
                "buffer capacity for RMT-R")


def run_peer(cfg):
    """The peer PyTorch loop with the same shape; None when torch is missing."""
    script = Path(FLAGS.peer_script)
    head = FLAGS.peer_head if FLAGS.peer_head != "auto" else "1" if FLAGS.mode == "train" else "0"
    if not script.exists():
        return {"peer": "missing", "script": str(script)}
    cmd = [sys.executable, str(script), f"--layers={cfg.layers}", f"--d={cfg.d_model}",
           f"--heads={cfg.heads}", f"--vocab={cfg.vocab_size}", f"--seg={cfg.segment_len}",
           f"--mem={cfg.mem_tokens}", f"--batch={FLAGS.batch}", f"--segments={FLAGS.segments}",
           f"--mode={FLAGS.mode}", f"--dtype={FLAGS.dtype}", f"--repeats={FLAGS.repeats}",
           f"--head={head}"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode:
        return {"peer": "failed", "stderr_tail": done.stderr[-500:]}
    record = json.loads(done.stdout.strip().splitlines()[-1])
    record["command"] = " ".join(cmd)
    if cfg.memory != "rmt":
        record["note"] = f"the peer runs plain RMT, not {cfg.memory}"
    return record


def append_json(path, record):
    """Appends `record` to the JSON list in `path`, replacing the file atomically."""
    path = Path(path)
    records = json.loads(path.read_text()) if path.exists() else []
    records.append(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(records, indent=1) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


# Flags and their least values.
FLAG_MINIMA = {"batch": 1, "segments": 1, "segment_len": 0, "mem_tokens": 0, "scan_unroll": 1,
               "query_len": 5, "repeats": 1, "stream_tokens": 1, "chunk_segments": 1,
               "peak_matmul_n": 0}


def check_flags() -> None:
    """Exits with an `error:` line for a flag out of range, before any compute."""
    for name, low in FLAG_MINIMA.items():
        if FLAGS[name].value < low:
            sys.exit(f"error: --{name}={FLAGS[name].value} must be >= {low}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    host_memory.keep()  # before JAX starts its CPU client
    check_flags()
    try:
        if FLAGS.out:
            check_output_file(FLAGS.out, json_list=True)
        cfg = build_config()
    except ValueError as e:
        sys.exit(f"error: {e}")
    device = jax.devices()[0]
    model = RMT(cfg, rngs=nnx.Rngs(0))
    record = dict(tag=FLAGS.tag, preset=FLAGS.preset, layers=cfg.layers, d_model=cfg.d_model,
                  heads=cfg.heads, vocab=cfg.vocab_size, segment_len=cfg.segment_len,
                  mem_tokens=cfg.mem_tokens,
                  batch=FLAGS.batch, dtype=FLAGS.dtype, param_dtype=FLAGS.param_dtype,
                  mode=FLAGS.mode, memory=cfg.memory, d_mem=cfg.d_mem,
                  retrieval=cfg.retrieval, params=count_params(model),
                  remat_policy=cfg.remat_policy, attention_impl=cfg.attention_path or "auto",
                  scan_unroll=cfg.scan_unroll, bptt_segments=cfg.bptt_segments,
                  xla_flags=os.environ.get("XLA_FLAGS", ""),
                  keep_host_memory=host_memory.keep(),
                  device=f"{device.platform}:{device.device_kind}",
                  cpu_count=os.cpu_count(), jax=jax.__version__)

    if FLAGS.mode == "stream":
        if FLAGS.profile_dir:
            raise app.UsageError("--profile_dir traces one infer or train call; a stream is "
                                 "profiled with jax.profiler around launch code instead")
        record.update(run_stream(cfg, model))
        print(json.dumps(record), flush=True)
        if FLAGS.out:
            append_json(FLAGS.out, record)
        return

    batch = make_batch(cfg, np.random.default_rng(0))
    run = run_infer if FLAGS.mode == "infer" else run_train
    (seconds, fastest), compile_s, flops = run(cfg, model, batch)
    peak_gib, memory_kind = peak_memory()
    n = FLAGS.peak_matmul_n or (8192 if device.platform == "gpu" else 1024)
    peak_flops = measure_bf16_peak(n)
    tokens = FLAGS.batch * FLAGS.segments * cfg.segment_len
    record.update(segments=FLAGS.segments, query_len=FLAGS.query_len,
                  median_s=round(seconds, 4), tokens_per_s=round(tokens / seconds, 1),
                  min_s=round(fastest, 4), tokens_per_s_fastest=round(tokens / fastest, 1),
                  compile_s=round(compile_s, 2), peak_memory_gib=round(peak_gib, 3),
                  memory_kind=memory_kind, model_flops_per_s=round(flops / seconds, 1),
                  bf16_peak_flops_per_s=round(peak_flops, 1), peak_matmul_n=n,
                  mfu=round(flops / seconds / peak_flops, 4))
    if FLAGS.profile_dir:
        summary = trace_summary.summarize(trace_summary.load(FLAGS.profile_dir), top=15)
        print(trace_summary.format_table(summary))
        record["profile"] = dict(summary, per_call=f"one {FLAGS.mode} call of the record's shape")
    if FLAGS.peer:
        record["peer"] = run_peer(cfg)
    header = ("mode", "preset", "batch", "segments", "dtype", "memory", "tokens_per_s",
              "compile_s", "peak_memory_gib", "mfu")
    print(" | ".join(f"{h:>14}" for h in header))
    print(" | ".join(f"{record[h]!s:>14}" for h in header))
    if FLAGS.peer and "tokens_per_s" in record["peer"]:
        print(f"{'peer (torch)':>14} | tokens_per_s {record['peer']['tokens_per_s']}")
    print(json.dumps(record), flush=True)
    if FLAGS.out:
        append_json(FLAGS.out, record)


if __name__ == "__main__":
    app.run(main)
