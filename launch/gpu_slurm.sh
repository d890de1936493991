#!/usr/bin/env bash
# Train on a SLURM GPU cluster: one task per GPU, all tasks forming one JAX job.
#
#   sbatch launch/gpu_slurm.sh CONFIG WORKDIR [--config.key=value ...]
#   sbatch --nodes=4 launch/gpu_slurm.sh configs/vfhq.py:512 /ckpt/vfhq-512
#
# Every task runs `python -m pechead_jax.main` with PECHEAD_DISTRIBUTED=1;
# jax.distributed.initialize() reads the coordinator, the process count and this task's
# rank from SLURM's environment (SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID) and each
# process drives the one GPU SLURM bound to it. The global batch (config.data.batch_size)
# must be a multiple of the number of GPUs. Resubmitting the same command resumes from the
# last checkpoint in WORKDIR; SLURM's SIGTERM before a time limit or preemption makes the
# trainer save and exit (--signal below gives it 120 s).
#
#SBATCH --job-name=pechead
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=12
#SBATCH --mem=0
#SBATCH --time=48:00:00
#SBATCH --signal=TERM@120
#SBATCH --requeue
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,6p' "$0" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2

REPO_DIR=${REPO_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}
PYTHON=${PYTHON:-$REPO_DIR/.venv/bin/python}
cd "$REPO_DIR"

export PECHEAD_DISTRIBUTED=1
# Let XLA take most of the GPU memory up front, without the default 75% cap.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}

# --kill-on-bad-exit: one failed task ends the job instead of leaving the rest waiting in a
# collective; --kill-on-bad-exit does not fire on the clean exit after SIGTERM.
srun --kill-on-bad-exit=1 --cpu-bind=cores \
  "$PYTHON" -m pechead_jax.main --config="$config" --workdir="$workdir" "$@"
