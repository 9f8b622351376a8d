#!/usr/bin/env bash
# Creates (or reuses) a Cloud TPU VM and runs RMT training on all of its workers.
#
#   launch/tpu_vm.sh NAME ZONE ACCELERATOR_TYPE CONFIG WORKDIR [extra train flags...]
#   launch/tpu_vm.sh rmt-v4 us-central2-b v4-32 configs/rmt_babilong.py:gpt2_small,qa1 \
#       gs://my-bucket/rmt_qa1 --config.train.batch_size=128
#
# Every worker gets this repository (copied with `gcloud compute tpus tpu-vm scp`), installs
# it with JAX for TPU, and runs `python -m launch.train --multihost`, which calls
# jax.distributed.initialize() so that the workers form one mesh. WORKDIR must be reachable
# by every worker (a gs:// bucket). The books and bAbI files are copied from ../shared/data
# when present (set DATA_DIR to another folder with babi/ and haystack/).
set -euo pipefail

if [[ $# -lt 5 ]]; then
  sed -n '2,12p' "$0" >&2
  exit 2
fi
NAME=$1 ZONE=$2 ACCELERATOR=$3 CONFIG=$4 WORKDIR=$5
shift 5
VERSION=${TPU_SOFTWARE_VERSION:-tpu-ubuntu2204-base}
REPO=$(cd "$(dirname "$0")/.." && pwd)
DATA_DIR=${DATA_DIR:-$REPO/../shared/data}

if ! gcloud compute tpus tpu-vm describe "$NAME" --zone="$ZONE" >/dev/null 2>&1; then
  echo "creating TPU VM $NAME ($ACCELERATOR) in $ZONE"
  gcloud compute tpus tpu-vm create "$NAME" --zone="$ZONE" \
    --accelerator-type="$ACCELERATOR" --version="$VERSION"
else
  echo "reusing TPU VM $NAME"
fi

tarball=$(mktemp --suffix=.tar.gz)
trap 'rm -f "$tarball"' EXIT
git -C "$REPO" archive --format=tar.gz -o "$tarball" HEAD
gcloud compute tpus tpu-vm scp "$tarball" "$NAME:~/rmt.tar.gz" --zone="$ZONE" --worker=all
if [[ -d $DATA_DIR ]]; then
  gcloud compute tpus tpu-vm scp --recurse "$DATA_DIR" "$NAME:~/shared_data" \
    --zone="$ZONE" --worker=all
fi

# shellcheck disable=SC2145
gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command="
  set -e
  mkdir -p ~/rmt && tar -xzf ~/rmt.tar.gz -C ~/rmt && cd ~/rmt
  python3 -m venv ~/venv && . ~/venv/bin/activate
  pip install -q -U pip && pip install -q -e . 'jax[tpu]'
  python -m launch.train --multihost --config='$CONFIG' --workdir='$WORKDIR' \
    --config.data.babi_dir=\$HOME/shared_data/babi \
    --config.data.haystack_dir=\$HOME/shared_data/haystack $*
"
