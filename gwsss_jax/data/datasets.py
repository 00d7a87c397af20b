"""Datasets as lists of examples: the common currency of every stage.

A reader (`READERS`, keyed by `config.data.name`: VOC, the built-in dataset in VOC's layout,
MSRC-v2, COCO, tfds) turns what the user has on disk into a `core.Dataset`; the tf.data
pipelines, the sampler and the evaluators only see this. Readers import `core` and no other
reader.
"""

import os

from gwsss_jax.common.errors import UserError
from gwsss_jax.data import coco
from gwsss_jax.data import core
from gwsss_jax.data import msrc
from gwsss_jax.data import tfds_source
from gwsss_jax.data import voc

# config.data.name -> the reader module, whose `load(data_config, split)` gives a core.Dataset.
READERS = {'voc': voc, 'synthetic': voc, 'msrc': msrc, 'coco': coco, 'tfds_voc': tfds_source,
           'tfds_coco': tfds_source}


def check_mask_values(dataset: core.Dataset, data_config, num_workers: int = 8) -> None:
  """Decodes every ground-truth mask of `dataset` and checks its values (`palette.read_mask`:
  an error naming the file and the values, or a warning under `data.skip_bad`). Stages that
  read masks through tf.data call it first: an error raised inside the pipeline would not
  reach the user as one line."""
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  from gwsss_jax.data import palette  # pylint: disable=g-import-not-at-top
  paths = [ex.mask_path for ex in dataset.examples if ex.mask_path]
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    for _ in pool.map(lambda p: palette.read_mask(p, data_config.num_classes,
                                                  data_config.skip_bad), paths):
      pass


def require_masks(config, dataset: core.Dataset) -> None:
  """UserError unless every image of the training split has a ground-truth mask (oracle)."""
  missing = [ex.name for ex in dataset.examples if not ex.mask_path]
  if missing:
    raise UserError(f'config.seg.oracle=True needs ground-truth masks, but split '
                    f'{config.data.train_split!r} has none for {len(missing)} images '
                    f'(e.g. {missing[0]})')


def saliency_root(config) -> str:
  """`data.saliency_dir` resolved against `data.root` when relative; '' when unset."""
  d = config.data.saliency_dir
  if not d:
    return ''
  return d if os.path.isabs(d) else os.path.join(config.data.root, d)


def synthetic_root(workdir: str) -> str:
  return os.path.join(workdir, 'data', 'synthetic')


def prepare(config, workdir: str) -> None:
  """Resolves `config.data.root`; generates the built-in dataset into the workdir if absent."""
  d = config.data
  if d.name == 'synthetic':
    if not d.root:
      d.root = synthetic_root(workdir)
    import jax  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    from gwsss_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    if jax.process_index() == 0:  # one writer; the others wait for it (shared filesystem)
      synthetic.ensure(d.root, seed=d.synthetic.seed, num_train=d.synthetic.num_train,
                       num_val=d.synthetic.num_val, size=d.synthetic.size,
                       num_classes=d.num_classes)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('synthetic_dataset')
    return
  if d.name.startswith('tfds_'):
    return
  if not d.root:
    raise UserError(f'config.data.root is empty: point it at your {d.name.upper()} data '
                    '(see docs/data.md)')
  if not os.path.isdir(d.root):
    raise UserError(f'config.data.root={d.root!r}: directory not found')
  if d.name == 'msrc' and not d.cache_dir:
    d.cache_dir = os.path.join(workdir, 'cache')  # the converted masks (the root may be read-only)


def load_split(config, split: str) -> core.Dataset:
  """The examples of `split` ('train_aug', 'train', 'val', ...) of the configured dataset."""
  reader = READERS.get(config.data.name)
  if reader is None:
    raise UserError(f'config.data.name={config.data.name!r}: choose from '
                    f'{", ".join(sorted(READERS))}')
  return reader.load(config.data, split)
