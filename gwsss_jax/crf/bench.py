"""The `crf` group of `gwsss_jax.bench`: images per second of the two dense-CRF implementations
on the same synthetic inputs (a blocky noisy image, softmax probabilities over K labels,
`seg.crf_params`), measured in alternating rounds so that a shared machine's load hits both
sides alike; the ratio is the median of the rounds' ratios.

- reference: pydensecrf2 over the round's images in a pool of one process per CPU core (as
  eval_seg runs it), the pool started before timing;
- jax: one call on a batch of those images (`make_labeller`, split over `devices`), compiled
  before timing.

Each side's CPU time per image is emitted too (the pool's workers time their tasks; JAX's is
this process's, all XLA threads included): on a machine whose cores other jobs keep busy, the
wall-clock ratio depends on how the scheduler shares them out, the CPU time much less.
"""

import multiprocessing
import os
import statistics
import time

import jax
import numpy as np

from gwsss_jax import crf as crf_lib
from gwsss_jax.crf import dense
from gwsss_jax.crf import reference


def _inputs(n, h, w, k, seed=0):
  rng = np.random.default_rng(seed)
  imgs, probs = [], []
  for _ in range(n):
    img = np.kron(rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3)), np.ones((16, 16, 1)))
    imgs.append(np.clip(img[:h, :w] + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8))
    logits = np.kron(rng.normal(0, 2, (h // 16 + 1, w // 16 + 1, k)), np.ones((16, 16, 1)))
    p = np.exp(logits[:h, :w] + rng.normal(0, 1, (h, w, k)))
    probs.append((p / p.sum(-1, keepdims=True)).astype(np.float32))
  return np.stack(imgs), np.stack(probs)


def _reference_task(task):
  """The labels and the CPU seconds that this worker spent on them."""
  probs, rgb, params = task
  start = time.process_time()
  labels = reference.from_probs(probs.transpose(2, 0, 1), rgb, params)
  return labels, time.process_time() - start


def run(emit, params: crf_lib.Params, devices, *, quick: bool, rounds: int, context: dict):
  """Emits crf.{reference,jax}.{images_per_s,cpu_s_per_image}, crf.jax_over_reference (images
  per second) and crf.jax_over_reference_cpu (reference CPU time per image over JAX's)."""
  h, w, k, n = (48, 64, 4, 2) if quick else (240, 320, 21, 2 * max(len(devices), 2))
  rgb, probs = _inputs(n, h, w, k)
  ctx = dict(context, image=f'{h}x{w}', labels=k, batch=n, iterations=params.iterations,
             cpu_processes=os.cpu_count(), jax_devices=len(devices))
  labeller = dense.make_labeller(params, devices)
  unary = np.asarray(dense.unary_from_probs(probs))
  hw = np.array([[h, w]] * n, np.int32)
  start = time.perf_counter()
  jax.block_until_ready(labeller(unary, rgb, hw))
  emit('crf.jax.compile_time', time.perf_counter() - start, 's', **ctx)
  pool = None
  if reference.available():
    pool = multiprocessing.get_context('spawn').Pool(os.cpu_count() or 1)
    tasks = [(probs[i], rgb[i], params) for i in range(n)]
    pool.map(_reference_task, tasks[:1])  # workers started and the module imported
  ref_s, jax_s, ref_cpu, jax_cpu = [], [], [], []
  try:
    for _ in range(rounds):
      if pool is not None:
        start = time.perf_counter()
        done = pool.map(_reference_task, tasks, chunksize=1)
        ref_s.append(time.perf_counter() - start)
        ref_cpu.append(sum(cpu for _, cpu in done) / n)
      start, cpu = time.perf_counter(), time.process_time()
      jax.block_until_ready(labeller(unary, rgb, hw))
      jax_s.append(time.perf_counter() - start)
      jax_cpu.append((time.process_time() - cpu) / n)
  finally:
    if pool is not None:
      pool.terminate()
  emit('crf.jax.images_per_s', n / statistics.median(jax_s), 'images/s', **ctx)
  emit('crf.jax.cpu_s_per_image', statistics.median(jax_cpu), 's', **ctx)
  if pool is None:
    emit('crf.reference.images_per_s', None, 'images/s',
         note='pydensecrf2 not installed (requirements-crf.txt)', **ctx)
    return
  emit('crf.reference.images_per_s', n / statistics.median(ref_s), 'images/s', **ctx)
  emit('crf.reference.cpu_s_per_image', statistics.median(ref_cpu), 's', **ctx)
  emit('crf.jax_over_reference', statistics.median(r / j for r, j in zip(ref_s, jax_s)),
       'ratio of images/s', **ctx)
  emit('crf.jax_over_reference_cpu', statistics.median(r / j for r, j in zip(ref_cpu, jax_cpu)),
       'ratio of CPU s per image (reference / JAX)', **ctx)
