"""Where the JAX dense CRF spends its CPU time against the reference: one image, each kernel alone.

  python -m benchmarks.crf_kernels --rounds=5

On one synthetic 240x320 image with 21 labels (the inputs of `gwsss_jax.bench --only=crf`) and
`seg.crf_params`, it times, in this one process and in alternating rounds, the CPU time of:

- reference: pydensecrf2's `DenseCRF2D`, from its construction through `inference`
  (`setup` is the construction with the unary and the kernels, which builds each kernel's
  lattice and its normalisation);
- jax: `dense.mean_field_one`, jit-compiled before timing, with the lattice tables sized by
  `dense.grown_capacity` (1.25 x the points found, in steps of 4096); `lattice` is the
  bilateral or Gaussian lattice's `build` alone, `filter` one filtering of the K channels
  (splat, blur, slice) on it;

for both kernels, the bilateral one alone (`pos_w=0`) and the Gaussian one alone (`bi_w=0`).
Prints one JSON line per measurement (`kernels`, `side`, `part`, `cpu_ms`: the median over the
rounds) and one per kernel set with the ratio of the medians. The CPU time is the process's, all
of XLA's threads included, so it does not depend on how many cores the machine lends.

With GWSSS_BENCH_SMOKE=1 (benchmarks/smoke.py) it runs one round on a 24x32 image with 4 labels.
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import smoke
from gwsss_jax import config as config_lib
from gwsss_jax import crf as crf_lib
from gwsss_jax.crf import bench as crf_bench
from gwsss_jax.crf import dense
from gwsss_jax.crf import lattice as lattice_lib
from gwsss_jax.crf import reference

KERNELS = {'both': {}, 'bilateral': {'pos_w': 0.0}, 'gaussian': {'bi_w': 0.0}}


def _cpu_ms(fn) -> float:
  start = time.process_time()
  jax.block_until_ready(fn())
  return (time.process_time() - start) * 1e3


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rounds', type=int, default=5)
  args = parser.parse_args(argv)
  quick = smoke.enabled()
  h, w, k = (24, 32, 4) if quick else (240, 320, 21)
  rounds = 1 if quick else max(args.rounds, 1)
  rgb, probs = crf_bench._inputs(1, h, w, k)  # pylint: disable=protected-access
  config_params = crf_lib.params_from_config(config_lib.base_config().seg.crf_params)
  unary = np.asarray(dense.unary_from_probs(probs[0]))
  u = jnp.asarray(unary)
  img = jnp.asarray(rgb[0])
  hw = jnp.array([h, w], jnp.int32)
  n = h * w
  pos_f, bi_f, _ = jax.jit(dense._features, static_argnums=2)(  # pylint: disable=protected-access
      img, hw, config_params)
  count = jax.jit(lattice_lib.count_points)
  caps = (dense.grown_capacity(int(count(pos_f)), 3 * n),
          dense.grown_capacity(int(count(bi_f)), 6 * n))

  with_reference = reference.available()
  timers = {}
  for name, change in KERNELS.items():
    params = config_params._replace(**change)
    fn = jax.jit(lambda x, r, s, p=params: dense.mean_field_one(x, r, s, p, caps))
    jax.block_until_ready(fn(u, img, hw))
    timers[name, 'jax', 'total'] = lambda fn=fn: fn(u, img, hw)
    if with_reference:
      setup = lambda params=params: reference.build(unary.transpose(2, 0, 1), rgb[0], params)
      timers[name, 'reference', 'setup'] = setup
      timers[name, 'reference', 'total'] = (
          lambda setup=setup, it=params.iterations: np.asarray(setup().inference(it)))
  values = jnp.asarray(probs[0].reshape(n, k))
  for name, feats, cap in (('bilateral', bi_f, caps[1]), ('gaussian', pos_f, caps[0])):
    build = jax.jit(lambda f, cap=cap: lattice_lib.build(f, cap))
    lattice = jax.block_until_ready(build(feats))
    timers[name, 'jax', 'lattice'] = lambda build=build, feats=feats: build(feats)
    filt = jax.jit(lattice_lib.filter_values)
    jax.block_until_ready(filt(lattice, values))
    timers[name, 'jax', 'filter'] = lambda filt=filt, lattice=lattice: filt(lattice, values)

  times = {key: [] for key in timers}
  for _ in range(rounds):
    for key, fn in timers.items():
      times[key].append(_cpu_ms(fn))
  context = dict(image=f'{h}x{w}', labels=k, iterations=config_params.iterations,
                 rounds=rounds, capacities=list(caps), jax=jax.__version__)
  medians = {key: statistics.median(v) for key, v in times.items()}
  for (name, side, part), ms in medians.items():
    print(json.dumps(dict(kernels=name, side=side, part=part, cpu_ms=round(ms, 2), **context)))
  for name in KERNELS:
    ref = medians.get((name, 'reference', 'total'))
    ratio = medians[name, 'jax', 'total'] / ref if ref else None
    print(json.dumps(dict(kernels=name, jax_over_reference_cpu=ratio and round(ratio, 3),
                          note=None if ref else 'pydensecrf2 not installed', **context)))


if __name__ == '__main__':
  main()
