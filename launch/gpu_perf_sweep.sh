#!/usr/bin/env bash
# What would make the RMT recurrence faster on one NVIDIA GPU: launch.benchmark_rmt at the
# GPT-2 small shape (segment 512, 16 memory tokens, bf16, cuDNN attention) under variants of
# the same run, each against its baseline, in order of the open targets of issue #3:
#   inference batch 1 x 64 segments: baseline (profiled), scan_unroll 4 and 8, XLA command
#     buffers for the while loop (CUDA graphs), both;
#   training step 8 x 8: baseline (profiled), remat dots_saveable, scan_unroll 2;
#   inference batch 8 x 32: baseline, scan_unroll 4.
# The profiled runs add `profile` to their record: the device's busy fraction over one call
# and its costliest kernels (launch/trace_summary.py). jax.profiler turns command buffers
# off while it traces, so a profile shows the run without CUDA graphs. The baseline of
# inference at batch 1 leaves its optimized HLO in OUT_DIR/hlo_infer_b1.tar.gz.
#
# Usage: launch/gpu_perf_sweep.sh OUT_DIR
# Env: SWEEP_SECONDS (360): runs not started by then are skipped; PRESET (gpt2_small);
#      SMOKE=1 runs every variant on a CPU with the tiny preset in about a minute.
# Writes OUT_DIR/perf_sweep.json (one record per run, `tag` names the variant),
# OUT_DIR/perf_sweep.txt (the log, ending with the table) and hlo_infer_b1.tar.gz: three
# files, within the 8 that the device tool returns from $OUT.
set -uo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: launch/gpu_perf_sweep.sh OUT_DIR" >&2
  exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SMOKE=${SMOKE:-0}
SWEEP_SECONDS=${SWEEP_SECONDS:-360}
PRESET=${PRESET:-$([[ $SMOKE == 1 ]] && echo tiny || echo gpt2_small)}
LOG=$OUT/perf_sweep.txt
JSON=$OUT/perf_sweep.json
WORK=$(mktemp -d)
START=$SECONDS
export PYTHONUNBUFFERED=1
CMDBUF="--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL"

log() { echo "[$((SECONDS - START))s] $*" | tee -a "$LOG"; }

common=(--preset="$PRESET" --dtype=bf16 --attention_impl=cudnn --repeats=5)
limit=150
if [[ $SMOKE == 1 ]]; then
  common=(--preset="$PRESET" --dtype=bf16 --attention_impl=xla --repeats=1
          --segment_len=16 --mem_tokens=2 --peak_matmul_n=256)
  limit=120
fi

run() {  # run TAG XLA_FLAGS BENCHMARK_FLAGS...
  local tag=$1 xla=$2
  shift 2
  if (( SECONDS - START >= SWEEP_SECONDS )); then
    log "skipped (SWEEP_SECONDS=$SWEEP_SECONDS): $tag"
    return 0
  fi
  log "$tag: XLA_FLAGS='$xla' $*"
  XLA_FLAGS="$xla" XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 timeout -k 10 "$limit" \
    "$PY" -m launch.benchmark_rmt "${common[@]}" --tag="$tag" --out="$JSON" "$@" >> "$LOG" 2>&1
  local rc=$?
  (( rc != 0 )) && log "$tag exited with $rc"
  return 0
}

b1=(--mode=infer --batch=1 --segments=64 --param_dtype=bf16)
# The baseline also dumps its optimized HLO (the kernels of one segment: the while body).
run infer_b1 "--xla_dump_to=$WORK/hlo --xla_dump_hlo_as_text --xla_dump_hlo_module_re=infer" \
  "${b1[@]}" --profile_dir="$WORK/prof_infer_b1"
# one archive, not a folder of files: the device returns at most 8 files from $OUT
mkdir -p "$WORK/hlo_infer_b1"
find "$WORK/hlo" -name '*infer*after_optimizations.txt' -exec cp {} "$WORK/hlo_infer_b1/" \; \
  2>/dev/null
tar -C "$WORK" -czf "$OUT/hlo_infer_b1.tar.gz" hlo_infer_b1
run infer_b1_unroll4 "" "${b1[@]}" --scan_unroll=4
run infer_b1_cmdbuf "$CMDBUF" "${b1[@]}"
run infer_b1_unroll8 "" "${b1[@]}" --scan_unroll=8
run infer_b1_unroll4_cmdbuf "$CMDBUF" "${b1[@]}" --scan_unroll=4
t8=(--mode=train --batch=8 --segments=8)
run train_b8x8 "" "${t8[@]}" --profile_dir="$WORK/prof_train_b8x8"
run train_b8x8_dots_saveable "" "${t8[@]}" --remat_policy=dots_saveable
run train_b8x8_unroll2 "" "${t8[@]}" --scan_unroll=2
b8=(--mode=infer --batch=8 --segments=32 --param_dtype=bf16)
run infer_b8 "" "${b8[@]}"
run infer_b8_unroll4 "" "${b8[@]}" --scan_unroll=4

# -- the table: each variant against the baseline of its shape ------------------------------
"$PY" - "$JSON" <<'EOF' | tee -a "$LOG"
import json, sys
from pathlib import Path

path = Path(sys.argv[1])
records = json.loads(path.read_text()) if path.exists() else []
base = {}
for r in records:
    shape = (r["mode"], r["batch"], r["segments"])
    base.setdefault(shape, r["tokens_per_s"])  # the first run of a shape is its baseline
print(f"{'tag':<26} {'tokens/s':>11} {'vs base':>8} {'MFU':>6} {'peak GiB':>8} {'busy':>6} "
      f"{'compile/s':>9}")
for r in records:
    shape = (r["mode"], r["batch"], r["segments"])
    busy = r.get("profile", {}).get("busy_fraction", "")
    print(f"{r['tag']:<26} {r['tokens_per_s']:>11,.0f} {r['tokens_per_s'] / base[shape]:>7.2f}x "
          f"{r['mfu']:>6} {r['peak_memory_gib']:>8} {busy!s:>6} {r['compile_s']:>9}")
for r in records:
    if "profile" in r:
        print(f"\n{r['tag']}: busy {r['profile']['busy_fraction']}, "
              f"{r['profile']['events']} device events; costliest:")
        for row in r["profile"]["top"][:8]:
            print(f"  {row['count']:>6} x {row['mean_us']:>9.2f} us  {row['name'][:90]}")
EOF
log "done"
rm -rf "$WORK"
