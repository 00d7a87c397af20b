"""The two input loaders side by side: groups per second of `train_iterator` with
`data.loader='tf'` and `'numpy'` on the configured training split, in alternating rounds.

  python -m benchmarks.loaders --config=configs/demo.py --rounds=5 --batches=20

Each round times both loaders (the order swapped every round) on the same epoch's groups: the
first batch of each iterator is not timed (set-up: tracing, the thread pool, the first reads),
the next `--batches` are. `--config.*` overrides apply as in `gwsss_jax.main`, so
`--config=configs/msrc.py --config.data.root=...` measures the MSRC-v2 input at its sizes. The
built-in dataset (`data.name='synthetic'` without a root) is generated into a temporary folder.

Prints one JSON line per round and loader, then `loaders.numpy_over_tf`: the median over the
rounds of the ratio of the two rates, with each loader's median rate and the thread count (the
numpy loader's `data.num_threads`, 0 = one per core; tf.data autotunes its own). With
GWSSS_BENCH_SMOKE=1 (benchmarks/smoke.py): one round of 2 batches on a tiny built-in dataset.
"""

import json
import os
import statistics
import sys
import tempfile

from absl import app
from absl import flags
from ml_collections import config_flags

from gwsss_jax.common import blas

blas.limit_threads()  # as gwsss_jax.main does, before NumPy loads (gwsss_jax/common/blas.py)

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import smoke
# pylint: enable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/demo.py', 'Configuration file.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Alternating rounds.')
_BATCHES = flags.DEFINE_integer('batches', 20, 'Timed batches per loader and round.')


def main(argv):
  del argv
  from gwsss_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from gwsss_jax.data import datasets  # pylint: disable=g-import-not-at-top
  from gwsss_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  rounds, batches = _ROUNDS.value, _BATCHES.value
  if smoke.enabled():
    rounds, batches = 1, 2
    if config.data.name == 'synthetic' and not config.data.root:
      config.data.synthetic.num_train, config.data.synthetic.num_val = 24, 4
      config.data.synthetic.size = 64
      config.data.crop_size, config.data.resize = 48, 56
  config_lib.validate(config)
  with tempfile.TemporaryDirectory() as tmp:
    datasets.prepare(config, tmp)
    dataset = datasets.load_split(config, config.data.train_split)
    steps = len(dataset) * config.train.repeats_per_epoch // config.train.batch_size
    if steps < batches + 1:
      sys.exit(f'error: {steps} batches per epoch; --batches={batches} needs at least '
               f'{batches + 1}')
    ctx = dict(dataset=config.data.name, K=config.model.num_nodes,
               image_size=config_lib.input_size(config), batch_groups=config.train.batch_size,
               batches=batches, threads=config.data.num_threads or os.cpu_count())
    rates = {'tf': [], 'numpy': []}
    for r in range(rounds):
      order = ('tf', 'numpy') if r % 2 == 0 else ('numpy', 'tf')
      for loader in order:
        cfg = config.copy_and_resolve_references()
        cfg.data.loader = loader
        rate = input_pipeline.groups_per_s(dataset, cfg, batches, epoch=r)
        rates[loader].append(rate)
        print(json.dumps({'round': r, 'loader': loader, 'groups_per_s': rate, **ctx}),
              flush=True)
  ratios = [n / t for n, t in zip(rates['numpy'], rates['tf'])]
  print(json.dumps({'name': 'loaders.numpy_over_tf', 'value': statistics.median(ratios),
                    'tf_groups_per_s': statistics.median(rates['tf']),
                    'numpy_groups_per_s': statistics.median(rates['numpy']), 'rounds': rounds,
                    **ctx}), flush=True)


if __name__ == '__main__':
  app.run(main)
