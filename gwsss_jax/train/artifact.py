"""The trained-model record of a segmentation run: what inference needs, and only that.

`<checkpoint dir>/seg_model.json` (written by train_seg when a run starts) names the network
(`model`, `width`, `output_stride`, `num_classes`, `dtype`, the Caffe ResNet layout) and the
input normalisation it was trained with. `load(directory)` rebuilds the module from the record
and reads `params` and `batch_stats` of the newest readable checkpoint beside it, a partial
restore: the optimizer state is not read, so no training key (learning rates, warm-up, the
pretrained head) has to match for inference.
"""

import json
import os
from types import SimpleNamespace

import jax
import jax.numpy as jnp

from gwsss_jax.common import io as gio
from gwsss_jax.common.errors import UserError
from gwsss_jax.train import checkpoint

MODEL_FILE = 'seg_model.json'


def save(directory: str, record: dict) -> None:
  gio.atomic_write_text(os.path.join(directory, MODEL_FILE), json.dumps(record, indent=2) + '\n')


def read(directory: str) -> dict:
  path = os.path.join(directory, MODEL_FILE)
  if not os.path.isfile(path):
    raise UserError(f'no trained segmentation model in {directory} (missing {MODEL_FILE}): '
                    'run the train_seg stage first (--config.stages=train_seg)')
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f'{path}: unreadable model record ({e})') from None


def build(record: dict):
  """The segmentation module that `record` describes."""
  from gwsss_jax.models import deeplab  # pylint: disable=g-import-not-at-top
  seg = SimpleNamespace(model=record['model'], width=record['width'],
                        output_stride=record['output_stride'],
                        num_classes=record['num_classes'],
                        dtype=record.get('dtype', 'float32'))
  meta = {'arch': 'resnet101_caffe'} if record.get('caffe_layout') else None
  return deeplab.build_segmenter(seg, meta)


def load(directory: str) -> tuple:
  """(module, {'params', 'batch_stats'} as host arrays, record with the checkpoint's 'step')."""
  record = read(directory)
  module = build(record)
  size = 32 * 8  # any size the network accepts: only the variables' shapes are used
  shapes = jax.eval_shape(lambda: module.init({'params': jax.random.key(0),
                                               'dropout': jax.random.key(0)},
                                              jnp.zeros((1, size, size, 3)), train=False))
  template = {'params': shapes['params'], 'batch_stats': shapes.get('batch_stats', {})}
  ckpt = checkpoint.Checkpointer(directory, asynchronous=False)
  try:
    step, variables = ckpt.restore_latest(template, partial=True)
  finally:
    ckpt.close()
  if step is None:
    raise UserError(f'no checkpoint in {directory}: run the train_seg stage first')
  return module, variables, dict(record, step=step)
