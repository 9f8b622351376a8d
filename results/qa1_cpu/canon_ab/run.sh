#!/bin/bash
# Canon layers, one lever, from scratch: configs/qa1_cpu.py (seed 0, the shipped run's
# --config.model.bptt_segments=4) twice, side by side on the 2 CPU cores, one core each,
# for the same minutes:
#   base:   the config as it is;
#   canon4: the same with --config.model.canon_kernel=4 (a causal depthwise convolution of 4
#           taps on the input of every attention and MLP, starting as the identity).
# A 30-minute leg (SIGTERM), both evaluated; then both resumed for 60 more minutes
# (SIGTERM), both evaluated again. Same seed, so the same batches at the same step while
# both are in the same stage; each arm advances its curriculum when its own running train
# accuracy reaches 0.92.
#   bash results/qa1_cpu/canon_ab/run.sh      (WORK_ROOT=/tmp/canon_ab by default)
set -e
cd "$(dirname "$0")/../../.."  # the repository root
export PYTHONPATH=.
R=${WORK_ROOT:-/tmp/canon_ab}; mkdir -p $R
OUT=results/qa1_cpu/canon_ab
arm() {  # arm NAME CORE MINUTES [flags]
  local name=$1 core=$2 minutes=$3; shift 3
  taskset -c $core timeout -s TERM ${minutes}m python -m launch.train --config=configs/qa1_cpu.py \
    --workdir=$R/$name --config.model.bptt_segments=4 --config.eval.every=0 \
    --config.train.checkpoint_every=1000 --config.train.keep_checkpoints=20 "$@" \
    >> $R/$name.log 2>&1 || true  # SIGTERM ends the leg; the run saves and can resume
}
evaluate() {  # evaluate NAME CORE LENGTHS OUT_DIR
  taskset -c $2 python -m launch.evaluate --workdir=$R/$1 --step=latest --tasks=qa1 \
    --lengths=$3 --num_samples=500 --batch_size=50 --recipe=official --out_dir=$4 \
    > $R/$(basename $4).log 2>&1
}
rm -rf $R/base $R/canon4
arm base 0 30 & arm canon4 1 30 --config.model.canon_kernel=4 & wait
evaluate base 0 0k,1k,4k $OUT/eval_30min_base & evaluate canon4 1 0k,1k,4k $OUT/eval_30min_canon4 & wait
arm base 0 60 & arm canon4 1 60 --config.model.canon_kernel=4 & wait
evaluate base 0 0k,1k,4k,16k $OUT/eval_90min_base & evaluate canon4 1 0k,1k,4k,16k $OUT/eval_90min_canon4 & wait
cp $R/base/metrics.jsonl $OUT/metrics_base.jsonl
cp $R/canon4/metrics.jsonl $OUT/metrics_canon4.jsonl
