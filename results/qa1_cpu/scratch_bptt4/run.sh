#!/bin/bash
# configs/qa1_cpu.py from scratch (seed 0) with model.bptt_segments=4, the issue's 2 hours on
# 2 CPU cores, alone; then the evaluations of results/qa1_cpu/README.md ("A 2-hour run of the
# config from scratch, truncated back-propagation"). Its model was the shipped one on
# 2026-12-05 until ../resume32/run.sh resumed its checkpoint (in git at bdffcd9:
# results/qa1_cpu/{model,train_workdir}); its table and curve are here.
#   bash results/qa1_cpu/scratch_bptt4/run.sh      (WORK_ROOT=/tmp/scratch_bptt4 by default)
set -e
cd "$(dirname "$0")/../../.."  # the repository root
export PYTHONPATH=.
R=${WORK_ROOT:-/tmp/scratch_bptt4}; mkdir -p $R
# truncation acts from the 8-segment stage on (k counts the segments before the question's)
timeout -s TERM 120m python -m launch.train --config=configs/qa1_cpu.py --workdir=$R/w \
  --config.model.bptt_segments=4 > $R/train.log 2>&1 || true
python -m launch.export_checkpoint --workdir=$R/w --out_dir=$R/m --step=latest \
  --param_dtype=bfloat16 > $R/export.log 2>&1
python -m launch.evaluate --workdir=$R/m --tasks=qa1 --lengths=0k,1k,4k,16k,128k \
  --num_samples=100 --batch_size=50 --recipe=official --out_dir=$R/eval
python -m launch.evaluate --workdir=$R/m --tasks=qa1 --lengths=1M --num_samples=25 \
  --batch_size=25 --recipe=official --out_dir=$R/eval_1m
python results/qa1_cpu/merge_eval.py $R/eval $R/eval_1m results/qa1_cpu/scratch_bptt4/eval_all
python -m launch.evaluate --workdir=$R/m --tasks=qa1 --lengths=0k,1k,4k,16k \
  --num_samples=500 --batch_size=50 --recipe=official --out_dir=$R/eval_500
# the model shipped before (step 11,515, results/qa1_cpu/model until git 71e752f) on the same
# 500 questions per length
mkdir -p $R/old && git archive 71e752f results/qa1_cpu/model | tar -x -C $R/old --strip-components=3
python -m launch.evaluate --workdir=$R/old --tasks=qa1 --lengths=0k,1k,4k,16k \
  --num_samples=500 --batch_size=50 --recipe=official --out_dir=$R/shipped_500
python results/qa1_cpu/errors_by_name.py --workdir=$R/m --length=0k --num_samples=500 \
  --out=results/qa1_cpu/scratch_bptt4/names_0k.json
# (the committed curve.png, in results/qa1_cpu/ until bdffcd9, was drawn from the committed
#  copy of $R/w/metrics.jsonl: --metrics=results/qa1_cpu/scratch_bptt4/metrics.jsonl in place
#  of --workdir, the same rows)
python -m launch.plot_training --workdir=$R/w --out=results/qa1_cpu/scratch_bptt4/curve.png \
  --title="qa1_cpu from scratch, bptt_segments=4 (shipped)"
# resumed from its checkpoint (step 18,271, the 16-segment stage): ../resume32/run.sh
