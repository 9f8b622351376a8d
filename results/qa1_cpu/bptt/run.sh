#!/bin/bash
# Truncated back-propagation from the shipped checkpoint (step 11,515, 16-segment stage, lr 1e-4).
#   bash results/qa1_cpu/bptt/run.sh ARM [extra flags...]
# ARM base: the config as trained (full BPTT) for 832 steps, the steps share_0 of
#   ../bare_share made in 20 minutes (same command, so the same steps);
# any other ARM: 20 minutes of training with the extra flags.
# Then: export in bfloat16 and evaluate at 0k, 1k, 4k, 16k (100 original test questions each).
set -e
cd "$(dirname "$0")/../../.."  # the repository root
export PYTHONPATH=.
ARM=$1; shift
R=${WORK_ROOT:-/tmp/bptt}; mkdir -p $R
W=$R/w_$ARM
rm -rf $W && mkdir -p $W && git archive 71e752f results/qa1_cpu/train_workdir \
  | tar -x -C $W --strip-components=3  # step 11,515: train_workdir/ until git 71e752f
COMMON=(--config=configs/qa1_cpu.py --workdir=$W
  --config.curriculum.segments='(0,1,2,4,8,16,32)' --config.curriculum.story_questions='()'
  --config.curriculum.stage_steps=2000
  --config.optim.learning_rate=1e-4 --config.optim.stage_lr_scales='()' --config.eval.every=0)
if [ "$ARM" = base ]; then
  .venv/bin/python -m launch.train "${COMMON[@]}" --config.train.num_steps=12347 \
    --allow_config_change=curriculum.same_length_batches,train.num_steps > $R/train_$ARM.log 2>&1
else
  timeout -s TERM 20m .venv/bin/python -m launch.train "${COMMON[@]}" --config.train.num_steps=40000 \
    "$@" --allow_config_change=curriculum.same_length_batches,model.bptt_segments,curriculum.stage_steps \
    > $R/train_$ARM.log 2>&1 || true
fi
.venv/bin/python -m launch.export_checkpoint --workdir=$W --out_dir=$R/m_$ARM \
  --step=latest --param_dtype=bfloat16 > $R/export_$ARM.log 2>&1
.venv/bin/python -m launch.evaluate --workdir=$R/m_$ARM --tasks=qa1 --lengths=0k,1k,4k,16k \
  --num_samples=100 --batch_size=50 --recipe=official --out_dir=$R/eval_$ARM > $R/eval_$ARM.log 2>&1
echo "$ARM done $(date)" >> $R/progress
