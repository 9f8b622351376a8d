#!/usr/bin/env bash
# Runs RMT training on every worker of a Cloud TPU VM (created if absent), detached from ssh.
#
#   launch/tpu_vm.sh NAME ZONE ACCELERATOR_TYPE CONFIG WORKDIR [extra train flags...]
#   launch/tpu_vm.sh watch NAME ZONE [WORKER]     # follow a worker's log (default 0)
#   launch/tpu_vm.sh stop NAME ZONE               # SIGTERM the job on every worker (it saves)
#   DATA=gs://my-bucket/babilong_data launch/tpu_vm.sh rmt-v4 us-central2-b v4-32 \
#       configs/rmt_babilong.py:gpt2_small,qa1 gs://my-bucket/rmt_qa1 --config.train.batch_size=128
#
# WORKDIR is a gs:// folder every worker reaches; DATA a gs:// folder with babi/ and haystack/
# (default WORKDIR/data, filled once from DATA_DIR=../shared/data). DRY_RUN=1 prints commands.
set -euo pipefail

usage() { sed -n '2,12p' "$0" >&2; exit 2; }

# Prints a command; runs it unless DRY_RUN=1.
run() {
  printf '+'; printf ' %q' "$@"; printf '\n'
  if [[ ${DRY_RUN:-0} != 1 ]]; then "$@"; fi
}

ssh_workers() {  # NAME ZONE WORKER COMMAND
  run gcloud compute tpus tpu-vm ssh "$1" --zone="$2" --worker="$3" --command="$4"
}

JOB_DIR='$HOME/rmt_job'  # on each worker: train.log, pid (the job's process group), *.sh

case ${1:-} in
  watch)
    [[ $# -ge 3 ]] || usage
    ssh_workers "$2" "$3" "${4:-0}" "tail -n 100 -F $JOB_DIR/train.log"
    exit 0 ;;
  stop)
    [[ $# -ge 3 ]] || usage
    # SIGTERM to the job's process group: launch.train saves a checkpoint, then exits.
    ssh_workers "$2" "$3" all "if [[ -f $JOB_DIR/pid ]]; then kill -TERM -- -\$(cat $JOB_DIR/pid) \
&& echo \"\$(hostname): sent SIGTERM\"; else echo \"\$(hostname): no job\"; fi"
    exit 0 ;;
esac

[[ $# -ge 5 ]] || usage
NAME=$1 ZONE=$2 ACCELERATOR=$3 CONFIG=$4 WORKDIR=${5%/}
shift 5
if [[ $WORKDIR != gs://* ]]; then
  echo "error: WORKDIR must be a gs:// folder that every worker reaches, got $WORKDIR" >&2
  exit 2
fi
VERSION=${TPU_SOFTWARE_VERSION:-tpu-ubuntu2204-base}
REPO=$(cd "$(dirname "$0")/.." && pwd)
DATA=${DATA:-$WORKDIR/data}
DATA=${DATA%/}
DATA_DIR=${DATA_DIR:-$REPO/../shared/data}
if [[ $DATA != gs://* ]]; then
  echo "error: DATA must be a gs:// folder with babi/ and haystack/, got $DATA" >&2
  exit 2
fi

if [[ ${DRY_RUN:-0} == 1 ]]; then
  echo "# when absent, the VM is created with:"
  run gcloud compute tpus tpu-vm create "$NAME" --zone="$ZONE" \
    --accelerator-type="$ACCELERATOR" --version="$VERSION"
elif ! gcloud compute tpus tpu-vm describe "$NAME" --zone="$ZONE" >/dev/null 2>&1; then
  echo "creating TPU VM $NAME ($ACCELERATOR) in $ZONE"
  run gcloud compute tpus tpu-vm create "$NAME" --zone="$ZONE" \
    --accelerator-type="$ACCELERATOR" --version="$VERSION"
else
  echo "reusing TPU VM $NAME"
fi

# The data goes to GCS once (rsync: only what changed); each worker reads it from there.
if [[ $DATA == "$WORKDIR/data" && -d $DATA_DIR ]]; then
  run gcloud storage rsync --recursive "$DATA_DIR/babi" "$DATA/babi"
  run gcloud storage rsync --recursive "$DATA_DIR/haystack" "$DATA/haystack"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git -C "$REPO" archive --format=tar.gz -o "$tmp/rmt.tar.gz" HEAD

# What each worker runs: start.sh installs, fetches the data from GCS and starts run.sh (the
# training) in its own session (setsid + nohup: a dropped ssh does not stop it), and copies
# its log to WORKDIR/logs every minute.
{
  echo 'cd "$HOME/rmt" && . "$HOME/venv/bin/activate"'
  printf '%q ' python -m launch.train --multihost --config="$CONFIG" --workdir="$WORKDIR"
  printf '%s ' '--config.data.babi_dir="$HOME/shared_data/babi"' \
    '--config.data.haystack_dir="$HOME/shared_data/haystack"'
  if [[ $# -gt 0 ]]; then printf '%q ' "$@"; fi
  echo
  echo 'echo "exit status $?"'
} >"$tmp/run.sh"
cat >"$tmp/start.sh" <<EOF
set -euo pipefail
JOB=\$HOME/rmt_job
if [[ -f \$JOB/pid ]] && kill -0 -- "-\$(cat "\$JOB/pid")" 2>/dev/null; then
  echo "\$(hostname): a job is running (process group \$(cat "\$JOB/pid")): stop it first" >&2
  exit 1
fi
rm -rf "\$HOME/rmt" && mkdir -p "\$HOME/rmt" && tar -xzf "\$JOB/rmt.tar.gz" -C "\$HOME/rmt"
python3 -m venv "\$HOME/venv" && . "\$HOME/venv/bin/activate"
pip install -q -U pip && pip install -q -e "\$HOME/rmt[gcs]" 'jax[tpu]'
gcloud storage rsync --recursive $(printf '%q' "$DATA") "\$HOME/shared_data"
WORKER=\$(curl -sf -H Metadata-Flavor:Google \\
  http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number \\
  || hostname)
LOG=\$JOB/train.log
REMOTE_LOG=$(printf '%q' "$WORKDIR")/logs/worker-\$WORKER.log
setsid nohup bash "\$JOB/run.sh" >"\$LOG" 2>&1 </dev/null &
echo \$! >"\$JOB/pid"
setsid nohup bash -c "while kill -0 -- -\$(cat "\$JOB/pid") 2>/dev/null; do
  gcloud storage cp -q \$LOG \$REMOTE_LOG; sleep 60; done
  gcloud storage cp -q \$LOG \$REMOTE_LOG" >"\$JOB/log_copy.log" 2>&1 </dev/null &
echo "\$(hostname): job started (process group \$(cat "\$JOB/pid")), log \$LOG -> \$REMOTE_LOG"
EOF

if [[ ${DRY_RUN:-0} == 1 ]]; then
  echo "# each worker runs start.sh:"
  cat "$tmp/start.sh"
  echo "# which starts run.sh:"
  cat "$tmp/run.sh"
fi
ssh_workers "$NAME" "$ZONE" all "mkdir -p $JOB_DIR"
run gcloud compute tpus tpu-vm scp "$tmp/rmt.tar.gz" "$tmp/start.sh" "$tmp/run.sh" \
  "$NAME:~/rmt_job/" \
  --zone="$ZONE" --worker=all
ssh_workers "$NAME" "$ZONE" all "bash $JOB_DIR/start.sh"

cat <<EOF
The job runs detached on every worker; closing this shell does not stop it.
  watch:  launch/tpu_vm.sh watch $NAME $ZONE [WORKER]
          (or gcloud storage cat $WORKDIR/logs/worker-0.log, copied every minute)
  stop:   launch/tpu_vm.sh stop $NAME $ZONE   (SIGTERM: a checkpoint is saved first)
  resume: run this command again; training resumes from the latest checkpoint in $WORKDIR
EOF
