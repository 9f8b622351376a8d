#!/bin/bash
# The 2-hour qa1_cpu run of ../scratch_bptt4/run.sh (its checkpoint: step 18,271, the
# 16-segment stage; results/qa1_cpu/train_workdir until git bdffcd9) resumed for 100 more
# minutes on 2 CPU cores, alone, with the same flags: the rest of the 16-segment stage, then
# the 32-segment (4k) stage. Then the evaluations of results/qa1_cpu/README.md ("Resumed into
# the 32-segment stage"). Its model is the shipped one since 2026-12-05 (twentieth session):
# results/qa1_cpu/{model,eval_all,train_workdir} came from $R/m, the evaluations and $R/w.
#   bash results/qa1_cpu/resume32/run.sh      (WORK_ROOT=/tmp/resume32 by default)
set -e
cd "$(dirname "$0")/../../.."  # the repository root
export PYTHONPATH=.
R=${WORK_ROOT:-/tmp/resume32}; mkdir -p $R
rm -rf $R/w && mkdir -p $R/w && git archive bdffcd9 results/qa1_cpu/train_workdir \
  | tar -x -C $R/w --strip-components=3
timeout -s TERM 100m python -m launch.train --config=configs/qa1_cpu.py --workdir=$R/w \
  --config.model.bptt_segments=4 > $R/train.log 2>&1 || true
cp $R/w/metrics.jsonl results/qa1_cpu/resume32/metrics.jsonl  # this leg's rows (18,300 on)
python -m launch.export_checkpoint --workdir=$R/w --out_dir=$R/m --step=latest \
  --param_dtype=bfloat16 > $R/export.log 2>&1
python -m launch.evaluate --workdir=$R/m --tasks=qa1 --lengths=0k,1k,4k,16k \
  --num_samples=500 --batch_size=50 --recipe=official --out_dir=$R/eval_500
python -m launch.evaluate --workdir=$R/m --tasks=qa1 --lengths=128k \
  --num_samples=100 --batch_size=50 --recipe=official --out_dir=$R/eval_128k
python results/qa1_cpu/errors_by_name.py --workdir=$R/m --length=0k --num_samples=500 \
  --out=results/qa1_cpu/resume32/names_0k.json
# between 16k and 128k: this model and step 18,271's (from git) on 100 questions each
python -m launch.evaluate --workdir=$R/m --tasks=qa1 --lengths=32k,64k --num_samples=100 \
  --batch_size=50 --recipe=official --out_dir=results/qa1_cpu/resume32/eval_32k_64k
mkdir -p $R/old && git archive bdffcd9 results/qa1_cpu/model | tar -x -C $R/old --strip-components=3
python -m launch.evaluate --workdir=$R/old --tasks=qa1 --lengths=32k,64k --num_samples=100 \
  --batch_size=50 --recipe=official --out_dir=results/qa1_cpu/resume32/step18271_32k_64k
# the shipped model's table (results/qa1_cpu/eval_all): 100 questions per length, 25 at 1M
python -m launch.evaluate --workdir=$R/m --tasks=qa1 --lengths=0k,1k,4k,16k,128k \
  --num_samples=100 --batch_size=50 --recipe=official --out_dir=$R/eval
python -m launch.evaluate --workdir=$R/m --tasks=qa1 --lengths=1M --num_samples=25 \
  --batch_size=25 --recipe=official --out_dir=$R/eval_1m
python results/qa1_cpu/merge_eval.py $R/eval $R/eval_1m results/qa1_cpu/eval_all
python -m launch.plot_training --out=results/qa1_cpu/curve.png \
  --metrics=results/qa1_cpu/scratch_bptt4/metrics.jsonl,results/qa1_cpu/resume32/metrics.jsonl \
  --title="qa1_cpu: 2 h from scratch (bptt_segments=4), resumed 100 min (shipped)"
# resume this run from the committed checkpoint (step 23,818, the 32-segment stage):
#   cp -r results/qa1_cpu/train_workdir /tmp/resume
#   python -m launch.train --config=configs/qa1_cpu.py --workdir=/tmp/resume \
#     --config.model.bptt_segments=4 --config.model.canon_kernel=0
# (canon_kernel=0: the config has had Canon layers since this run, and they change the
#  parameters' shapes)
