#!/usr/bin/env bash
# The GPU figures of the project in one go, on one NVIDIA GPU:
#   1. launch.benchmark_rmt at the GPT-2 small shape (segment 512, 16 memory tokens, bf16):
#      inference at batch 1 and 8, a training step at 8 x 8 segments (each beside the peer
#      PyTorch loop when PEER names its script), 8 x 32 segments (does it fit), RMT-R against
#      RMT at 64 segments, an 11M-token stream; optional runs are skipped once BENCH_SECONDS
#      have passed;
#   2. configs/qa1_gpu.py trained for TRAIN_SECONDS (then SIGTERM: it checkpoints and stops);
#   3. its export (bfloat16 parameters) evaluated on the qa1 test questions at 0k..1M.
#
# Usage: launch/gpu_results.sh OUT_DIR
# Env: PEER=path/to/peer_rmt_torch.py (default ../shared/bench/peer_rmt_torch.py),
#      BENCH=0 / TRAIN=0 skip a part, BENCH_SECONDS (200), TRAIN_SECONDS (200),
#      EVAL_LENGTHS (0k..128k) and EVAL_LONG (1M), evaluated in two calls, EVAL_SAMPLES (100),
#      PRESET (gpt2_small), SMOKE=1 for a seconds-long run of every step on a CPU.
# Writes into OUT_DIR: benchmark_rmt.json, train_metrics.jsonl, results.json, heatmap.png,
# checkpoint.tar.gz (the export), env.txt and log.txt (everything printed).
set -uo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: launch/gpu_results.sh OUT_DIR" >&2
  exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PEER=${PEER:-../shared/bench/peer_rmt_torch.py}
BENCH_SECONDS=${BENCH_SECONDS:-200}
TRAIN_SECONDS=${TRAIN_SECONDS:-200}
EVAL_LENGTHS=${EVAL_LENGTHS:-0k,1k,2k,4k,8k,16k,32k,64k,128k}
EVAL_LONG=${EVAL_LONG:-1M}
EVAL_SAMPLES=${EVAL_SAMPLES:-100}
SMOKE=${SMOKE:-0}
PRESET=${PRESET:-$([[ $SMOKE == 1 ]] && echo tiny || echo gpt2_small)}
LOG=$OUT/log.txt
WORK=$(mktemp -d)
START=$SECONDS
export PYTHONUNBUFFERED=1

log() { echo "[$((SECONDS - START))s] $*" | tee -a "$LOG"; }

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  "$PY" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, jax.devices())"
  "$PY" -c "import torch; print('torch', torch.__version__)" 2>/dev/null
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt" | tee -a "$LOG"

merge_results() {  # one results.json and heatmap.png of the parts done so far
  "$PY" - "$WORK" "$OUT" <<'EOF' >> "$LOG" 2>&1
import json, sys
from pathlib import Path

from rmt_jax import evaluate_lib

work, out = Path(sys.argv[1]), Path(sys.argv[2])
parts = [json.loads(p.read_text()) for p in (work / "eval_short" / "results.json",
                                             work / "eval_long" / "results.json") if p.exists()]
if parts:
    merged = evaluate_lib.merge_results(parts)
    evaluate_lib.write_results(merged, out, title="RMT (small) on qa1 after the GPU run")
    print("results of", merged["meta"]["lengths"])
EOF
}

# -- 1. benchmarks -------------------------------------------------------------------------
bench() {  # bench NAME TIMEOUT MEM_FRACTION FLAGS...
  local name=$1 limit=$2 fraction=$3
  shift 3
  log "bench $name: $*"
  XLA_PYTHON_CLIENT_MEM_FRACTION=$fraction timeout -k 10 "$limit" "$PY" -m launch.benchmark_rmt \
    --preset="$PRESET" --dtype=bf16 --out="$OUT/benchmark_rmt.json" "$@" >> "$LOG" 2>&1
  local rc=$?
  [[ $rc -ne 0 ]] && log "bench $name exited with $rc"
  return $rc
}
optional() { (( SECONDS - START < BENCH_SECONDS )) || { log "skipped (time): $*"; return 1; }; }

if [[ ${BENCH:-1} != 0 ]]; then
  peer=()
  [[ -f $PEER ]] && peer=(--peer --peer_script="$PEER")
  seg=(); [[ $SMOKE == 1 ]] && seg=(--segment_len=16 --mem_tokens=2)
  impl=--attention_impl=cudnn; [[ $SMOKE == 1 ]] && impl=--attention_impl=xla
  # The peer runs while this process holds its share: leave it room (0.6 of the card).
  bench infer_b1 120 0.6 "${seg[@]}" $impl --mode=infer --batch=1 --segments=64 \
    --param_dtype=bf16 --repeats=5 "${peer[@]}"
  bench infer_b8 120 0.6 "${seg[@]}" $impl --mode=infer --batch=8 --segments=32 \
    --param_dtype=bf16 --repeats=5 "${peer[@]}"
  bench train_b8x8 150 0.6 "${seg[@]}" $impl --mode=train --batch=8 --segments=8 \
    --repeats=5 "${peer[@]}"
  bench train_b8x32 120 0.95 "${seg[@]}" $impl --mode=train --batch=8 --segments=32 \
    --repeats=3 ||
    bench train_b8x32_remat 120 0.95 "${seg[@]}" $impl --mode=train --batch=8 --segments=32 \
      --repeats=3 --remat_policy=dots_saveable
  bench infer_b1_rmtr64 90 0.9 "${seg[@]}" $impl --mode=infer --batch=1 --segments=64 \
    --param_dtype=bf16 --repeats=5 --retrieval
  optional stream && bench stream_11M 60 0.9 "${seg[@]}" $impl --mode=stream --batch=1 \
    --param_dtype=bf16 --stream_tokens=$([[ $SMOKE == 1 ]] && echo 200000 || echo 11000000) \
    --chunk_segments=1024
  optional train64 && bench train_b2x64 60 0.9 "${seg[@]}" $impl --mode=train --batch=2 \
    --segments=64 --repeats=3
  optional train64r && bench train_b2x64_rmtr 60 0.9 "${seg[@]}" $impl --mode=train --batch=2 \
    --segments=64 --repeats=3 --retrieval
  optional xla && bench infer_b1_xla_attention 60 0.9 "${seg[@]}" --attention_impl=xla \
    --mode=infer --batch=1 --segments=64 --param_dtype=bf16 --repeats=5
  log "benchmarks done"
fi

# -- 2. training ---------------------------------------------------------------------------
if [[ ${TRAIN:-1} != 0 ]]; then
  RUN=$WORK/qa1_gpu
  EXPORT=$WORK/qa1_gpu_export
  train_flags=()
  if [[ $SMOKE == 1 ]]; then
    train_flags=(--config.model.layers=1 --config.model.d_model=32 --config.model.heads=2
                 --config.model.mem_tokens=2 --config.curriculum.segments="(0.25,1,2)"
                 --config.curriculum.stage_steps=3 --config.train.num_steps=15
                 --config.data.worker_count=2 --config.train.batch_size=8
                 --config.train.checkpoint_every=5 --config.train.log_every=5)
  fi
  log "train configs/qa1_gpu.py for at most ${TRAIN_SECONDS}s"
  timeout -s TERM -k 30 "$TRAIN_SECONDS" "$PY" -m launch.train --config=configs/qa1_gpu.py \
    --workdir="$RUN" "${train_flags[@]}" >> "$LOG" 2>&1
  log "train exited with $? (124: stopped by SIGTERM at the time limit, as planned)"
  cp "$RUN/metrics.jsonl" "$OUT/train_metrics.jsonl" 2>/dev/null
  grep -h '"step"' "$RUN/metrics.jsonl" 2>/dev/null | tail -1 | tee -a "$LOG"

  log "export (bfloat16 parameters)"
  "$PY" -m launch.export_checkpoint --workdir="$RUN" --out_dir="$EXPORT" --step=latest \
    --param_dtype=bfloat16 >> "$LOG" 2>&1 && log "exported" &&
    tar -C "$WORK" -czf "$OUT/checkpoint.tar.gz" --exclude=checkpoints qa1_gpu_export &&
    ls -la "$OUT/checkpoint.tar.gz" | tee -a "$LOG"

  # Two calls, the long lengths last, so that a time limit on them keeps the short ones.
  for part in short long; do
    lengths=$EVAL_LENGTHS; limit=${EVAL_SECONDS:-90}
    [[ $part == long ]] && { lengths=$EVAL_LONG; limit=${EVAL_LONG_SECONDS:-90}; }
    [[ -z $lengths ]] && continue
    log "evaluate $lengths x $EVAL_SAMPLES samples"
    timeout -k 10 "$limit" "$PY" -m launch.evaluate --workdir="$EXPORT" --step=best \
      --tasks=qa1 --lengths="$lengths" --num_samples="$EVAL_SAMPLES" --batch_size=50 \
      --stream_from=10M --out_dir="$WORK/eval_$part" >> "$LOG" 2>&1
    log "evaluate $part exited with $?"
    merge_results
  done
fi

# -- the short table (the end of the output) -----------------------------------------------
"$PY" - "$OUT" <<'EOF' | tee -a "$LOG"
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
bench = out / "benchmark_rmt.json"
if bench.exists():
    print(f"{'mode':>6} {'batch':>5} {'segs':>5} {'RMT-R':>5} {'tokens/s':>11} {'peer':>10} "
          f"{'peak GiB':>8} {'MFU':>6} {'compile/s':>9}")
    for r in json.loads(bench.read_text()):
        peer = r["peer"].get("tokens_per_s", "") if isinstance(r.get("peer"), dict) else ""
        segs = r.get("segments", r.get("segment_slots", ""))
        print(f"{r['mode']:>6} {r['batch']:>5} {segs!s:>5} {r['retrieval']!s:>5} "
              f"{r['tokens_per_s']:>11,.0f} {peer!s:>10} {r.get('peak_memory_gib', '')!s:>8} "
              f"{r.get('mfu', '')!s:>6} {r.get('compile_s', r.get('seconds', ''))!s:>9}")
metrics = out / "train_metrics.jsonl"
if metrics.exists():
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    if rows:
        print("train, last log:", {k: round(v, 4) if isinstance(v, float) else v
                                   for k, v in rows[-1].items()})
results = out / "results.json"
if results.exists():
    cells = json.loads(results.read_text())["results"]["qa1"]
    print("qa1 accuracy %:", {k: round(v["accuracy"] * 100, 1) for k, v in cells.items()})
EOF
log "done"
rm -rf "$WORK"
