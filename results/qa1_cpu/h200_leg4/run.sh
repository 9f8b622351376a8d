#!/usr/bin/env bash
# qa1_cpu attempt 3, a fourth leg on one GPU: resume the CPU run (step 15,845, 16-segment stage)
# with the same recipe (stage cap 1,500 as in leg 3), per-sample lengths (one compile per
# stage), for TRAIN_SECONDS, then export in bfloat16 and evaluate with the official recipe.
# Env: TRAIN_SECONDS (300), SMOKE=1 (a CPU run of every step in about two minutes), PY.
set -uo pipefail
T0=$SECONDS
OUT=${OUT:?set OUT}
SMOKE=${SMOKE:-0}
TRAIN_SECONDS=${TRAIN_SECONDS:-320}
PY=${PY:-python3}
LOG=$OUT/log.txt
export PYTHONUNBUFFERED=1
log() { echo "[$((SECONDS - T0))s] $*" | tee -a "$LOG"; }

if [[ $SMOKE != 1 ]]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/*.whl >> "$LOG" 2>&1 || { log "error: pip install of .whl failed"; exit 3; }
  export PYTHONPATH=/tmp/site:$PWD/.gpu/site:$PWD
  export XLA_PYTHON_CLIENT_MEM_FRACTION=0.5
else
  export PYTHONPATH=$PWD
fi
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  "$PY" -c "import jax, flax, optax, orbax.checkpoint as o, grain; print('python', __import__('sys').version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, jax.devices())"
  nproc
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt" | tee -a "$LOG"

if [[ ! -e ../shared/data/haystack ]]; then
  mkdir -p .gpu/shared && tar xJf .gpu/data.tar.xz -C .gpu/shared \
    && ln -sfn "$PWD/.gpu/shared" ../shared \
    || { log "error: cannot make ../shared"; exit 3; }
fi
W=/tmp/qa1_leg4; M=/tmp/qa1_leg4_model
rm -rf "$W" "$M" && mkdir -p /tmp/wdx && tar xzf .gpu/wd.tar.gz -C /tmp/wdx && mv /tmp/wdx/wd "$W"
log "data and workdir ready: $(ls ../shared/data) $(ls $W/checkpoints)"

train=(--config=configs/qa1_cpu.py --workdir="$W" --config.train.num_steps=40000
  --config.eval.every=0 --config.train.checkpoint_every=500 --config.train.seed=1
  --config.data.seed=1 --config.curriculum.stage_steps=1500
  --config.curriculum.same_length_batches=False
  --allow_config_change=train.num_steps,curriculum.same_length_batches,curriculum.stage_steps)
if [[ $SMOKE == 1 ]]; then
  train+=(--config.train.log_every=5)
fi
log "train for ${TRAIN_SECONDS}s"
timeout -s TERM -k 60 "$TRAIN_SECONDS" "$PY" -m launch.train "${train[@]}" >> "$LOG" 2>&1
log "train exited with $? (124: stopped by SIGTERM as planned)"
cp "$W/metrics.jsonl" "$OUT/train_metrics.jsonl"
tail -2 "$W/metrics.jsonl" | tee -a "$LOG"

"$PY" -m launch.export_checkpoint --workdir="$W" --out_dir="$M" --step=latest \
  --param_dtype=bfloat16 >> "$LOG" 2>&1 || log "export failed"
tar czf "$OUT/model.tar.gz" -C /tmp qa1_leg4_model
log "exported: $(du -sh $M | cut -f1)"

short=0k,1k,4k,16k,128k; n=100; long=1M; nl=25
if [[ $SMOKE == 1 ]]; then short=0k,1k; n=10; long=4k; nl=4; fi
"$PY" -m launch.evaluate --workdir="$M" --tasks=qa1 --lengths=$short --num_samples=$n \
  --batch_size=50 --recipe=official --out_dir=/tmp/eval_short >> "$LOG" 2>&1 \
  || log "short evaluation failed"
cp /tmp/eval_short/results.json "$OUT/eval_short.json" 2>/dev/null
log "short evaluation done"
timeout -k 10 100 "$PY" -m launch.evaluate --workdir="$M" --tasks=qa1 --lengths=$long \
  --num_samples=$nl --batch_size=25 --recipe=official --out_dir=/tmp/eval_long >> "$LOG" 2>&1 \
  || log "long evaluation failed or ran past 100 s"
cp /tmp/eval_long/results.json "$OUT/eval_long.json" 2>/dev/null
log "long evaluation done"
# the full checkpoint (parameters and AdamW state) of the last step, to resume on a CPU
last=$(ls "$W/checkpoints" | sort -n | tail -1)
tar czf "$OUT/checkpoint.tar.gz" -C "$W" config.json model_config.json "checkpoints/$last"
"$PY" - "$OUT" <<'EOF' | tee -a "$LOG"
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for name in ("eval_short.json", "eval_long.json"):
    p = out / name
    if p.exists():
        r = json.loads(p.read_text())["results"]
        print(name, {t: {k: round(v["accuracy"], 3) if isinstance(v, dict) and "accuracy" in v
                         else v for k, v in cells.items()} for t, cells in r.items()})
EOF
log "done"
