#!/bin/bash
# a third arm from the shipped checkpoint: half the batches bare, the stage held at 16
# segments (advance_accuracy 0.99), 20 minutes; compare with run.sh's bare_share=0 arm
cd "$(dirname "$0")/../../.."  # the repository root
export PYTHONPATH=.
W=/tmp/bare/w_0.5
rm -rf $W && mkdir -p $W && git archive 71e752f results/qa1_cpu/train_workdir \
  | tar -x -C $W --strip-components=3  # step 11,515: train_workdir/ until git 71e752f
timeout -s TERM 20m .venv/bin/python -m launch.train --config=configs/qa1_cpu.py --workdir=$W \
  --config.curriculum.segments='(0,1,2,4,8,16,32)' --config.curriculum.story_questions='()' \
  --config.curriculum.stage_steps=2000 --config.curriculum.advance_accuracy=0.99 \
  --config.optim.learning_rate=1e-4 --config.optim.stage_lr_scales='()' \
  --config.curriculum.bare_share=0.5 \
  --config.eval.every=0 --config.train.num_steps=40000 \
  --allow_config_change=curriculum.same_length_batches,curriculum.bare_share,curriculum.advance_accuracy \
  > /tmp/bare/train_0.5.log 2>&1
.venv/bin/python -m launch.export_checkpoint --workdir=$W --out_dir=/tmp/bare/m_0.5 \
  --step=latest --param_dtype=bfloat16 > /tmp/bare/export_0.5.log 2>&1
.venv/bin/python -m launch.evaluate --workdir=/tmp/bare/m_0.5 --tasks=qa1 --lengths=0k,1k,4k \
  --num_samples=100 --batch_size=50 --recipe=official --out_dir=/tmp/bare/eval_0.5 \
  > /tmp/bare/eval_0.5.log 2>&1
.venv/bin/python results/qa1_cpu/errors_by_name.py --workdir=/tmp/bare/m_0.5 --length=0k \
  --num_samples=500 --out=/tmp/bare/names_0.5.json > /tmp/bare/names_0.5.log 2>&1
echo "arm 0.5 done $(date)" >> /tmp/bare/progress
