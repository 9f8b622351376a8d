#!/bin/bash
# two arms from the shipped checkpoint (step 11,515, 16-segment stage), 20 minutes each
cd "$(dirname "$0")/../../.."  # the repository root
export PYTHONPATH=.
for share in 0 0.25; do
  W=/tmp/bare/w_$share
  rm -rf $W && mkdir -p $W && git archive 71e752f results/qa1_cpu/train_workdir \
    | tar -x -C $W --strip-components=3  # step 11,515: train_workdir/ until git 71e752f
  timeout -s TERM 20m .venv/bin/python -m launch.train --config=configs/qa1_cpu.py --workdir=$W \
    --config.curriculum.segments='(0,1,2,4,8,16,32)' --config.curriculum.story_questions='()' \
    --config.curriculum.stage_steps=2000 \
    --config.optim.learning_rate=1e-4 --config.optim.stage_lr_scales='()' \
    --config.curriculum.bare_share=$share \
    --config.eval.every=0 --config.train.num_steps=40000 \
    --allow_config_change=curriculum.same_length_batches,curriculum.bare_share > /tmp/bare/train_$share.log 2>&1
  echo "arm $share done $(date)" >> /tmp/bare/progress
done
for share in 0 0.25; do
  W=/tmp/bare/w_$share
  .venv/bin/python -m launch.export_checkpoint --workdir=$W --out_dir=/tmp/bare/m_$share \
    --step=latest --param_dtype=bfloat16 > /tmp/bare/export_$share.log 2>&1
  .venv/bin/python -m launch.evaluate --workdir=/tmp/bare/m_$share --tasks=qa1 --lengths=0k,1k,4k \
    --num_samples=100 --batch_size=50 --recipe=official --out_dir=/tmp/bare/eval_$share > /tmp/bare/eval_$share.log 2>&1
  echo "eval $share done $(date)" >> /tmp/bare/progress
done
