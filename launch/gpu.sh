#!/usr/bin/env bash
# Runs RMT training on one GPU host (all of its GPUs form the data axis of the mesh).
#
#   launch/gpu.sh CONFIG WORKDIR [extra train flags...]
#   launch/gpu.sh configs/rmt_babilong.py:small,qa1 /tmp/rmt_qa1 --config.train.num_steps=5000
#
# Installs the project with CUDA JAX into ./.venv-gpu on first use, then trains. Evaluation
# afterwards: python -m launch.evaluate --workdir=WORKDIR --tasks=qa1 --lengths=0k,1k,4k,16k
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,8p' "$0" >&2
  exit 2
fi
CONFIG=$1 WORKDIR=$2
shift 2
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
if [[ ! -x .venv-gpu/bin/python ]]; then
  python3 -m venv .venv-gpu
  .venv-gpu/bin/pip install -q -U pip
  .venv-gpu/bin/pip install -q -e . 'jax[cuda12]'
fi
# Let XLA take most of the GPU up front; the recurrence's buffers are sized at compile time.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
exec .venv-gpu/bin/python -m launch.train --config="$CONFIG" --workdir="$WORKDIR" "$@"
