"""Timing of the release VGG16's four max-pools (K=3 at 224x224): forward and gradient.

  .venv/bin/python -m benchmarks.pool_ops [--reps=7] [--batch=3]   (from the repository root)

Three implementations of the same pool: `reduce_window` differentiated by JAX (XLA:CPU
expands its select-and-scatter into iotas, an argmax reduce-window and a scatter),
`gwsss_jax.models.pooling.max_pool` (the project's custom VJP) and torch's max_pool2d (NCHW,
2 threads). The gradient timings include the forward, as a training step computes both.
Prints one JSON line per (pool, implementation, op) with the median in ms, then the totals.
With GWSSS_BENCH_SMOKE=1 (benchmarks/smoke.py) every pool shrinks (1/8 of the side and of the
channels, batch 1) and each op runs once, without warm-up.
"""

import argparse
import json
import statistics
import time

from gwsss_jax.common import xla_flags

from benchmarks import smoke

xla_flags.configure_cpu()
SMOKE = smoke.enabled()

import flax.linen as nn  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch  # pylint: disable=g-import-not-at-top,wrong-import-position

from gwsss_jax.models import pooling  # pylint: disable=g-import-not-at-top,wrong-import-position

# (name, H=W of the input, channels, window, stride, pad) of the release's pools.
POOLS = (('pool1', 224, 64, 2, 2, 0), ('pool2', 112, 128, 2, 2, 0),
         ('pool3', 56, 256, 2, 2, 0), ('pool4', 28, 512, 3, 1, 1))


def median_ms(fn, reps):
  if not SMOKE:
    jax.block_until_ready(fn())
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return 1e3 * statistics.median(times)


def jax_ops(pool, x, g, window, stride, pad):
  fwd = jax.jit(pool)
  grad = jax.jit(lambda x, g: jax.vjp(pool, x)[1](g)[0])
  return {'fwd': lambda: fwd(x), 'fwd+grad': lambda: grad(x, g)}


def torch_ops(x, g, window, stride, pad):
  xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
  gt = torch.from_numpy(np.asarray(g).transpose(0, 3, 1, 2).copy())

  def fwd():
    with torch.no_grad():
      torch.nn.functional.max_pool2d(xt, window, stride, pad)

  def grad():
    xg = xt.detach().requires_grad_(True)
    torch.nn.functional.max_pool2d(xg, window, stride, pad).backward(gt)
  return {'fwd': fwd, 'fwd+grad': grad}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--reps', type=int, default=7)
  parser.add_argument('--batch', type=int, default=3)
  args = parser.parse_args()
  if SMOKE:
    args.reps, args.batch = 1, 1
  torch.set_num_threads(2)
  rng = np.random.default_rng(0)
  total = {}
  for name, h, c, window, stride, pad in POOLS:
    if SMOKE:
      h, c = h // 8, c // 8
    # Post-ReLU activations: a quarter of the windows are all zeros (ties).
    x = jnp.asarray(np.maximum(rng.standard_normal((args.batch, h, h, c), np.float32), 0))
    padding = ((pad, pad), (pad, pad))
    ho = (h + 2 * pad - window) // stride + 1
    g = jnp.asarray(rng.standard_normal((args.batch, ho, ho, c), np.float32))
    impls = {
        'xla_reduce_window': jax_ops(
            lambda v: nn.max_pool(v, (window, window), (stride, stride), padding),
            x, g, window, stride, pad),
        'gwsss_pooling': jax_ops(lambda v: pooling.max_pool(v, window, stride, padding),
                                 x, g, window, stride, pad),
        'torch': torch_ops(x, g, window, stride, pad)}
    for impl, ops in impls.items():
      for op, fn in ops.items():
        ms = median_ms(fn, args.reps)
        total[(impl, op)] = total.get((impl, op), 0.0) + ms
        print(json.dumps({'pool': name, 'impl': impl, 'op': op, 'ms': round(ms, 2)}), flush=True)
  for (impl, op), ms in sorted(total.items()):
    print(json.dumps({'pool': 'all4', 'impl': impl, 'op': op, 'ms': round(ms, 1)}))


if __name__ == '__main__':
  main()
