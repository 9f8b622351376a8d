#!/bin/bash
# A 64-segment (8k) last stage, one lever, against arm A of ../cooldown_ab/run.sh: the shipped
# checkpoint (step 23,818, the 32-segment stage; results/qa1_cpu/train_workdir at git fdd5dde)
# resumed with the last stage drawing 1..64 segments per batch instead of 1..32, for A's
# minutes (49, the same timeout), on one pinned core. A ran beside arm B (a training run on
# the other core); this arm ran beside the quickstart check and evaluations. Then its model on A's
# 500 questions per length at 0k..16k, and both on 500 at 32k.
#   bash results/qa1_cpu/stage64/run.sh      (WORK_ROOT=/tmp/stage64 by default; A's model
#                                             from ../cooldown_ab/run.sh in /tmp/cooldown_ab/mA)
set -e
cd "$(dirname "$0")/../../.."  # the repository root
export PYTHONPATH=.
R=${WORK_ROOT:-/tmp/stage64}; A=${A_MODEL:-/tmp/cooldown_ab/mA}; mkdir -p $R
rm -rf $R/C && mkdir -p $R/C && git archive fdd5dde results/qa1_cpu/train_workdir \
  | tar -x -C $R/C --strip-components=3
timeout -s TERM 49m taskset -c 0 python -m launch.train --config=configs/qa1_cpu.py \
  --workdir=$R/C --config.model.bptt_segments=4 --config.eval.every=0 \
  "--config.curriculum.segments=(0,0,1,2,4,8,16,64)" \
  --allow_config_change=curriculum.segments > $R/C.log 2>&1 || true
cp $R/C/metrics.jsonl results/qa1_cpu/stage64/metrics_C.jsonl
python -m launch.export_checkpoint --workdir=$R/C --out_dir=$R/mC --step=latest \
  --param_dtype=bfloat16 > $R/export_C.log 2>&1
taskset -c 0 python -m launch.evaluate --workdir=$R/mC --tasks=qa1 --lengths=0k,1k,4k,16k \
  --num_samples=500 --batch_size=50 --recipe=official \
  --out_dir=results/qa1_cpu/stage64/eval_500_C > $R/evalC.log 2>&1 &
taskset -c 1 python -m launch.evaluate --workdir=$A --tasks=qa1 --lengths=32k \
  --num_samples=500 --batch_size=50 --recipe=official \
  --out_dir=results/qa1_cpu/stage64/eval_32k_A > $R/evalA32.log 2>&1 &
wait
taskset -c 0 python -m launch.evaluate --workdir=$R/mC --tasks=qa1 --lengths=32k \
  --num_samples=500 --batch_size=50 --recipe=official \
  --out_dir=results/qa1_cpu/stage64/eval_32k_C > $R/evalC32.log 2>&1
