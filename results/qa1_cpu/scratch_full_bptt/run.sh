#!/bin/bash
# The A/B arm of ../scratch_bptt4: configs/qa1_cpu.py from scratch (seed 0) as it is, full
# back-propagation (no flag), the same 2 hours on the same 2 CPU cores, alone; then the same
# evaluations. results/qa1_cpu/README.md, "Truncation or not: the 2-hour A/B".
#   bash results/qa1_cpu/scratch_full_bptt/run.sh     (WORK_ROOT=/tmp/full_bptt by default)
set -e
cd "$(dirname "$0")/../../.."  # the repository root
export PYTHONPATH=.
R=${WORK_ROOT:-/tmp/full_bptt}; mkdir -p $R
O=results/qa1_cpu/scratch_full_bptt
timeout -s TERM 120m python -m launch.train --config=configs/qa1_cpu.py --workdir=$R/w \
  > $R/train.log 2>&1 || true
cp $R/w/metrics.jsonl $O/metrics.jsonl
python -m launch.export_checkpoint --workdir=$R/w --out_dir=$R/m --step=latest \
  --param_dtype=bfloat16 > $R/export.log 2>&1
python -m launch.evaluate --workdir=$R/m --tasks=qa1 --lengths=0k,1k,4k,16k \
  --num_samples=500 --batch_size=50 --recipe=official --out_dir=$O/eval_500
python -m launch.evaluate --workdir=$R/m --tasks=qa1 --lengths=128k \
  --num_samples=100 --batch_size=50 --recipe=official --out_dir=$O/eval_128k
python -m launch.plot_training --workdir=$R/w --title="qa1_cpu, full back-propagation" \
  --out=$O/curve.png
