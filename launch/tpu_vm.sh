#!/usr/bin/env bash
# Cloud TPU VM slice: create it, install gwsss_jax on every worker, run the pipeline on all
# workers at once (one JAX process per host; jax.distributed finds its peers by itself).
#
#   launch/tpu_vm.sh create                      # the slice (TPU_NAME, ZONE, TPU_TYPE, TPU_VERSION)
#   launch/tpu_vm.sh setup                       # copy this checkout to every worker and install
#   launch/tpu_vm.sh run --config=configs/voc.py --workdir=/mnt/shared/runs/voc \
#       --config.data.root=/mnt/shared/VOC2012 --config.train.batch_size=32
#   launch/tpu_vm.sh ssh 'tail -f ~/gwsss_jax/run.log'   # any command on all workers
#   launch/tpu_vm.sh delete
#
# Everything after `run` is passed to `python -m gwsss_jax.main --jax_distributed`. The data root
# and the workdir must be the same shared filesystem on every worker (Filestore/NFS, or a
# gcsfuse mount): each process reads its shard of the data and all of them write one checkpoint.
set -euo pipefail

TPU_NAME=${TPU_NAME:-gwsss}
ZONE=${ZONE:-us-central2-b}
TPU_TYPE=${TPU_TYPE:-v4-32}
TPU_VERSION=${TPU_VERSION:-tpu-ubuntu2204-base}
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
REMOTE_DIR=${REMOTE_DIR:-gwsss_jax}
JAX_VERSION=${JAX_VERSION:-0.10.2}

on_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all \
    --command="$1"
}

cmd=${1:-}
shift || true
case "$cmd" in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG \
      --accelerator-type="$TPU_TYPE" --version="$TPU_VERSION"
    ;;
  setup)
    root=$(cd "$(dirname "$0")/.." && pwd)
    tarball=$(mktemp --suffix=.tar.gz)
    tar -C "$root" --exclude=.venv --exclude=.git --exclude=runs --exclude=.cache \
      --exclude=__pycache__ --exclude=.pytest_cache -czf "$tarball" .
    gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME":gwsss_jax.tar.gz --zone="$ZONE" \
      $PROJECT_FLAG --worker=all
    rm -f "$tarball"
    on_all "mkdir -p ~/$REMOTE_DIR && tar -C ~/$REMOTE_DIR -xzf ~/gwsss_jax.tar.gz && \
      cd ~/$REMOTE_DIR && python3 -m venv .venv && .venv/bin/pip install -q -U pip && \
      .venv/bin/pip install -q -r requirements.txt && \
      .venv/bin/pip install -q -U 'jax[tpu]==$JAX_VERSION' && \
      .venv/bin/python -c 'import jax; print(jax.process_index(), jax.local_device_count())'"
    ;;
  run)
    args=$(printf ' %q' "$@")
    on_all "cd ~/$REMOTE_DIR && .venv/bin/python -m gwsss_jax.main --jax_distributed$args \
      2>&1 | tee -a ~/$REMOTE_DIR/run.log"
    ;;
  ssh)
    on_all "$*"
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --quiet
    ;;
  *)
    sed -n '2,17p' "$0"
    exit 2
    ;;
esac
