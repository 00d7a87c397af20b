#!/usr/bin/env bash
# Multi-node GPU job: one JAX process per node, each using all GPUs of its node.
#
# SLURM (sbatch or srun inside an allocation; one task per node):
#   sbatch --nodes=2 --ntasks-per-node=1 --gpus-per-node=8 launch/gpu_multinode.sh \
#       --config=configs/voc.py --workdir=/shared/runs/voc --config.data.root=/shared/VOC2012
# torchrun-style launchers (or by hand on every node) set MASTER_ADDR, MASTER_PORT,
# WORLD_SIZE (= number of nodes here) and RANK (= node index) instead:
#   MASTER_ADDR=node0 WORLD_SIZE=2 RANK=1 launch/gpu_multinode.sh --config=... --workdir=...
#
# The environment is mapped to JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID,
# which gwsss_jax/train/distributed.py passes to jax.distributed.initialize(). Arguments are
# passed through to `python -m gwsss_jax.main --jax_distributed`. Install once per node
# (INSTALL=1) with: pip install -r requirements.txt && pip install -U "jax[cuda13]==0.10.2".
#SBATCH --job-name=gwsss
#SBATCH --ntasks-per-node=1
#SBATCH --output=gwsss-%j.log
set -euo pipefail

PYTHON=${PYTHON:-python}
PORT=${MASTER_PORT:-12355}
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"

if [[ "${INSTALL:-0}" == 1 ]]; then
  $PYTHON -m pip install -r requirements.txt
  $PYTHON -m pip install -U "jax[${JAX_CUDA_EXTRA:-cuda13}]==${JAX_VERSION:-0.10.2}"
fi

if [[ -n "${SLURM_JOB_ID:-}" && -z "${SLURM_STEP_ID:-}" && -z "${GWSSS_IN_STEP:-}" ]]; then
  # Under sbatch: start one task per node with srun, which runs this script again.
  export GWSSS_IN_STEP=1
  exec srun --ntasks-per-node=1 "$0" "$@"
fi

if [[ -n "${SLURM_PROCID:-}" ]]; then
  # Not `| head -n 1`: under pipefail, scontrol's SIGPIPE when head exits early fails the job.
  hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
  head=${hosts%%$'\n'*}
  export JAX_COORDINATOR_ADDRESS="$head:$PORT"
  export JAX_NUM_PROCESSES="$SLURM_NTASKS"
  export JAX_PROCESS_ID="$SLURM_PROCID"
else
  export JAX_COORDINATOR_ADDRESS="${MASTER_ADDR:?set MASTER_ADDR (or run under SLURM)}:$PORT"
  export JAX_NUM_PROCESSES="${WORLD_SIZE:?set WORLD_SIZE}"
  export JAX_PROCESS_ID="${RANK:?set RANK}"
fi
echo "process $JAX_PROCESS_ID of $JAX_NUM_PROCESSES, coordinator $JAX_COORDINATOR_ADDRESS" >&2
exec $PYTHON -m gwsss_jax.main --jax_distributed "$@"
