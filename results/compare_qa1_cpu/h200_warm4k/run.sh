#!/usr/bin/env bash
# Three runs at once on one GPU, TRAIN_SECONDS each, then export and evaluate each:
#   leg6: qa1_cpu attempt 3 leg 4's checkpoint (step 21,907, 32 segments) at lr 1e-4, as leg 5
#         but longer (#13: does the low rate keep climbing?)
#   rmtw / fullw: compare_qa1_cpu.py:rmt,warm and :full,warm from the committed backbone, the
#         curriculum (2,4,8,16,32) segments, 600 steps a stage at most, the same seconds (#12:
#         full attention trained up to 4k tokens, beside RMT).
# Env: TRAIN_SECONDS (360), SMOKE=1 (a CPU run of every step), PY.
set -uo pipefail
T0=$SECONDS
OUT=${OUT:?set OUT}
SMOKE=${SMOKE:-0}
TRAIN_SECONDS=${TRAIN_SECONDS:-360}
PY=${PY:-python3}
LOG=$OUT/log.txt
export PYTHONUNBUFFERED=1
log() { echo "[$((SECONDS - T0))s] $*" | tee -a "$LOG"; }

if [[ $SMOKE != 1 ]]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/*.whl >> "$LOG" 2>&1 || { log "error: pip install of .whl failed"; exit 3; }
  export PYTHONPATH=/tmp/site:$PWD/.gpu/site:$PWD
  export XLA_PYTHON_CLIENT_MEM_FRACTION=0.3
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
R=${RUNS:-/tmp/r3}
rm -rf "$R" && mkdir -p "$R/wdx" && tar xzf .gpu/wd.tar.gz -C "$R/wdx" && mv "$R/wdx/wd" "$R/leg6"
log "data and workdir ready: $(ls ../shared/data) $(ls $R/leg6/checkpoints)"

common=(--config.eval.every=0 --config.train.checkpoint_every=500)
[[ $SMOKE == 1 ]] && common+=(--config.train.log_every=5)
leg6=(--config=configs/qa1_cpu.py --workdir="$R/leg6" --config.train.num_steps=60000
  --config.train.seed=1 --config.data.seed=1 --config.curriculum.stage_steps=1500
  --config.curriculum.same_length_batches=False --config.optim.learning_rate=1e-4
  --allow_config_change=train.num_steps,curriculum.same_length_batches,curriculum.stage_steps,optim.learning_rate)
warm=(--config.curriculum.segments='(2,4,8,16,32)' --config.curriculum.stage_steps=600
  --config.curriculum.same_length_batches=False --config.train.num_steps=60000)
[[ $SMOKE == 1 ]] && warm=(--config.curriculum.segments='(2,32)' --config.curriculum.stage_steps=6
  --config.curriculum.same_length_batches=False --config.train.num_steps=60000)
log "train three runs for ${TRAIN_SECONDS}s each, at once"
timeout -s TERM -k 60 "$TRAIN_SECONDS" "$PY" -m launch.train "${leg6[@]}" "${common[@]}" \
  > "$OUT/train_leg6.log" 2>&1 &
timeout -s TERM -k 60 "$TRAIN_SECONDS" "$PY" -m launch.train \
  --config=configs/compare_qa1_cpu.py:rmt,warm --workdir="$R/rmtw" "${warm[@]}" "${common[@]}" \
  > "$OUT/train_rmtw.log" 2>&1 &
timeout -s TERM -k 60 "$TRAIN_SECONDS" "$PY" -m launch.train \
  --config=configs/compare_qa1_cpu.py:full,warm --workdir="$R/fullw" "${warm[@]}" "${common[@]}" \
  > "$OUT/train_fullw.log" 2>&1 &
wait
log "training done"
for a in leg6 rmtw fullw; do
  cp "$R/$a/metrics.jsonl" "$OUT/${a}_metrics.jsonl"
  tail -1 "$R/$a/metrics.jsonl" | tee -a "$LOG"
  "$PY" -m launch.export_checkpoint --workdir="$R/$a" --out_dir="$R/m_$a" --step=latest \
    --param_dtype=bfloat16 >> "$LOG" 2>&1 || log "export $a failed"
done
tar czf "$OUT/models.tar.gz" -C "$R" m_leg6 m_rmtw m_fullw
log "exported"

short=0k,1k,4k,16k,128k; n=100; long=1M; nl=25; ebs=50
if [[ $SMOKE == 1 ]]; then short=0k,1k; n=4; long=4k; nl=2; fi
for a in leg6 rmtw fullw; do
  bs=$ebs; [[ $a == fullw ]] && bs=8
  ( "$PY" -m launch.evaluate --workdir="$R/m_$a" --tasks=qa1 --lengths=$short --num_samples=$n \
      --batch_size=$bs --recipe=official --out_dir="$R/es_$a" > "$OUT/eval_short_$a.log" 2>&1 \
      || echo "short evaluation of $a failed" >> "$LOG"
    cp "$R/es_$a/results.json" "$OUT/eval_short_$a.json" 2>/dev/null
    timeout -k 10 110 "$PY" -m launch.evaluate --workdir="$R/m_$a" --tasks=qa1 --lengths=$long \
      --num_samples=$nl --batch_size=$nl --recipe=official --out_dir="$R/el_$a" \
      > "$OUT/eval_long_$a.log" 2>&1 || echo "long evaluation of $a failed or past 110 s" >> "$LOG"
    cp "$R/el_$a/results.json" "$OUT/eval_long_$a.json" 2>/dev/null ) &
done
wait
log "evaluations done"
"$PY" - "$OUT" <<'EOF' | tee -a "$LOG"
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for p in sorted(out.glob("eval_*.json")):
    r = json.loads(p.read_text())["results"]
    print(p.name, {t: {k: round(v["accuracy"], 3) if isinstance(v, dict) and "accuracy" in v
                       else v for k, v in cells.items()} for t, cells in r.items()})
EOF
log "done"
