#!/bin/bash
# A learning-rate cool-down, one lever, on the shipped qa1_cpu run: its committed checkpoint
# (step 23,818, the last, 32-segment stage; results/qa1_cpu/train_workdir at git fdd5dde)
# resumed for the same 1,500 steps twice, side by side on 2 CPU cores, one core each:
#   A: the recipe as it is, the constant 1e-4 of the stage;
#   B: the same, but the rate falls linearly from 1e-4 to 0 over the 1,500 steps
#      (optim.cooldown_steps: a warm-stable-decay schedule's decay, from a constant run).
# Both draw the same batches (same seed, same steps), so they take the same minutes.
# Then both models, exported, on the same 500 original qa1 test questions per length.
#   bash results/qa1_cpu/cooldown_ab/run.sh      (WORK_ROOT=/tmp/cooldown_ab by default)
set -e
cd "$(dirname "$0")/../../.."  # the repository root
export PYTHONPATH=.
R=${WORK_ROOT:-/tmp/cooldown_ab}; mkdir -p $R
STEPS=$((23818 + 1500))
for arm in A B; do
  rm -rf $R/$arm && mkdir -p $R/$arm && git archive fdd5dde results/qa1_cpu/train_workdir \
    | tar -x -C $R/$arm --strip-components=3
done
common="--config=configs/qa1_cpu.py --config.model.bptt_segments=4 --config.eval.every=0
  --config.train.num_steps=$STEPS"
timeout -s TERM 95m taskset -c 0 python -m launch.train $common --workdir=$R/A \
  --allow_config_change=train.num_steps > $R/A.log 2>&1 &
timeout -s TERM 95m taskset -c 1 python -m launch.train $common --workdir=$R/B \
  --config.optim.cooldown_steps=1500 --allow_config_change=train.num_steps,optim.cooldown_steps \
  > $R/B.log 2>&1 &
wait
for arm in A B; do
  cp $R/$arm/metrics.jsonl results/qa1_cpu/cooldown_ab/metrics_$arm.jsonl
  python -m launch.export_checkpoint --workdir=$R/$arm --out_dir=$R/m$arm --step=latest \
    --param_dtype=bfloat16 > $R/export_$arm.log 2>&1
done
taskset -c 0 python -m launch.evaluate --workdir=$R/mA --tasks=qa1 --lengths=0k,1k,4k,16k \
  --num_samples=500 --batch_size=50 --recipe=official \
  --out_dir=results/qa1_cpu/cooldown_ab/eval_500_A > $R/evalA.log 2>&1 &
taskset -c 1 python -m launch.evaluate --workdir=$R/mB --tasks=qa1 --lengths=0k,1k,4k,16k \
  --num_samples=500 --batch_size=50 --recipe=official \
  --out_dir=results/qa1_cpu/cooldown_ab/eval_500_B > $R/evalB.log 2>&1 &
wait
