"""The data check: every file that the configured stages will read is present and has a
readable header, checked before the first training step (headers only: no pixel is decoded).

`pipeline.run` calls `check` before any stage, for the stages configured; the stage
`check_data` (`--config.stages=check_data`) runs it alone, for the whole pipeline. It checks
- the image lists of the splits read (`data.train_split`; `data.val_split` for train_cls's
  held-out mAP and eval_seg): list syntax, class indices, each image present with a readable
  header, each mask present where the split has masks, 8-bit (palette or greyscale), of its
  image's size (`gwsss_jax.data.voc`);
- ground-truth masks for every training image when `seg.oracle` trains on them;
- a saliency map with a readable header for every training image (`data.saliency_dir`, read by
  pseudo_labels);
- the pretrained weights directories of `model.pretrained` (train_cls) and `seg.pretrained`
  (train_seg); a name (`torchvision:vgg16`) is fetched and checked when the run starts.
The first problem stops the run with one line naming the file (`data.skip_bad` skips bad
items of the lists instead, as the stages do).
"""

import concurrent.futures
import os

from gwsss_jax.common.errors import UserError
from gwsss_jax.data import datasets
from gwsss_jax.data import core
from gwsss_jax.models import hub

NAME = 'check_data'  # the stage that runs the check alone
_READS_TRAIN = ('train_cls', 'export_cams', 'pseudo_labels', 'eval_cams', 'train_seg')


def check(config, stages) -> dict:
  """Checks the files that `stages` will read; returns {'check_data/files': count}."""
  stages = set(stages)
  if config.data.name.startswith('tfds_'):
    return {}  # tfds reads its own prepared records: no files of the user's to check
  splits = []
  if stages & set(_READS_TRAIN):
    splits.append(config.data.train_split)
  if config.data.val_split and stages & {'train_cls', 'eval_seg'}:
    splits.append(config.data.val_split)
  files = 0
  loaded = {}
  for split in dict.fromkeys(splits):
    loaded[split] = dataset = datasets.load_split(config, split)
    files += sum(1 + bool(ex.mask_path) for ex in dataset.examples)
  train = loaded.get(config.data.train_split)
  if train is not None and 'train_seg' in stages and config.seg.oracle:
    datasets.require_masks(config, train)
  if train is not None and 'pseudo_labels' in stages and config.data.saliency_dir:
    files += _check_saliency(config, train)
  for key, stage in (('model.pretrained', 'train_cls'), ('seg.pretrained', 'train_seg')):
    path = config.model.pretrained if key == 'model.pretrained' else config.seg.pretrained
    if stage in stages and path and path not in hub.NAMES:  # a name is fetched at the start
      if not os.path.exists(path):
        raise UserError(f'config.{key}={path!r}: not found')
      files += 1
  print(f'[{NAME}] {files} files present with readable headers', flush=True)
  return {f'{NAME}/files': files}


def _check_saliency(config, dataset) -> int:
  root = datasets.saliency_root(config)

  def problem(ex):
    path = os.path.join(root, ex.name + '.png')
    if not os.path.isfile(path):
      return (f'saliency map not found: {path} (config.data.saliency_dir needs <name>.png for '
              "every training image; set it to '' to use the CAM background threshold instead)")
    if core.header_size(path) is None:
      return f'corrupt saliency map {path}: unreadable header'
    return None
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    for message in pool.map(problem, dataset.examples):
      if message:
        raise UserError(message)
  return len(dataset.examples)
