#!/usr/bin/env bash
# One arm of the qa1 ablation: train configs/quickstart.py with the given overrides, then
# evaluate the last checkpoint on 100 original qa1 test questions at 0k, 1k and 4k.
#   results/ablation_qa1_cpu/run_arm.sh ARM [--config.FIELD=VALUE ...]
# Run from the repository root. Writes results/ablation_qa1_cpu/ARM/ (results.json, the
# training metrics, timing.json); the workdir goes to $WORK_ROOT/ARM (default /tmp).
set -euo pipefail
arm=$1
shift
work=${WORK_ROOT:-/tmp/ablation_qa1_cpu}/$arm
out=results/ablation_qa1_cpu/$arm
mkdir -p "$out" "$(dirname "$work")"
start=$(date +%s)
# no evaluation during training: the arms are compared on the last checkpoint alone
.venv/bin/python -m launch.train --config=configs/quickstart.py --workdir="$work" \
  --config.eval.every=0 "$@" > "$out/train.log" 2>&1
trained=$(date +%s)
.venv/bin/python -m launch.evaluate --workdir="$work" --step=latest --tasks=qa1 \
  --lengths=0k,1k,4k --num_samples=100 --out_dir="$out" > "$out/evaluate.log" 2>&1
done_at=$(date +%s)
cp "$work/metrics.jsonl" "$out/metrics.jsonl" 2>/dev/null || true
printf '{"arm": "%s", "overrides": "%s", "train_s": %d, "evaluate_s": %d}\n' \
  "$arm" "$*" $((trained - start)) $((done_at - trained)) > "$out/timing.json"
cat "$out/evaluate.log" | tail -8
