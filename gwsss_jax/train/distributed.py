"""Multi-host start-up: `jax.distributed.initialize()` when the launch asks for it."""

import os

import jax
from absl import logging


def initialize(enabled: bool) -> None:
  """Joins the multi-process job. Coordinator, process count and id come from the
  environment that JAX auto-detects (Cloud TPU, SLURM, Open MPI) or from
  JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (launch/gpu_multinode.sh)."""
  if not enabled:
    return
  # Cross-process collectives of the CPU backend (tests, CPU clusters); GPUs and TPUs use their
  # own (NCCL, ICI) whatever this says.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  kwargs = {}
  if 'JAX_COORDINATOR_ADDRESS' in os.environ:
    kwargs = dict(coordinator_address=os.environ['JAX_COORDINATOR_ADDRESS'],
                  num_processes=int(os.environ['JAX_NUM_PROCESSES']),
                  process_id=int(os.environ['JAX_PROCESS_ID']))
  jax.distributed.initialize(**kwargs)
  logging.info('process %d of %d, %d local / %d global devices', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
