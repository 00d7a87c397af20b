"""The record of a trained network: what later stages and inference need, and only that.

Each training stage writes a JSON record beside its checkpoints when a run starts:
`cls_checkpoints/cls_model.json` (train_cls, kind 'classifier') and
`seg_*checkpoints/seg_model.json` (train_seg, kind 'segmenter'). It names the network (the
architecture keys of `config.model` or `config.seg` and the class count), the input
normalisation it was trained with (a `data.normalization` spec), and the pretrained weights it
started from (for the segmenter, also the head layers those weights initialised and the Caffe
ResNet layout). `load(directory)` rebuilds the module from the record and reads `params` and
`batch_stats` of the newest readable checkpoint beside it, a partial restore: the optimizer
state is not read, so no training key (learning rates, warm-up, the schedule) has to match for
CAM export, evaluation or prediction.
"""

import json
import os
from types import SimpleNamespace
from typing import Optional

import jax
import jax.numpy as jnp

from gwsss_jax.common import io as gio
from gwsss_jax.common.errors import UserError
from gwsss_jax.train import checkpoint

CLASSIFIER, SEGMENTER = 'classifier', 'segmenter'
FILES = {CLASSIFIER: 'cls_model.json', SEGMENTER: 'seg_model.json'}
_STAGES = {CLASSIFIER: 'train_cls', SEGMENTER: 'train_seg'}  # the stage that trains each kind
CLASSIFIER_DIR = 'cls_checkpoints'
# The keys of `config.seg` a segmenter record holds and an evaluation config must match.
SEG_ARCH_KEYS = ('model', 'width', 'output_stride', 'num_classes')


def classifier_dir(workdir: str) -> str:
  """Where train_cls keeps its checkpoints and record."""
  return os.path.join(workdir, CLASSIFIER_DIR)


def classifier_record(config, normalization: dict) -> dict:
  """The record of the classifier that `config` trains with input `normalization`."""
  from gwsss_jax.models import classifier  # pylint: disable=g-import-not-at-top
  return {'kind': CLASSIFIER, 'model': {k: config.model[k] for k in classifier.ARCH_KEYS},
          'num_classes': config.data.num_classes, 'normalization': normalization,
          'pretrained': config.model.pretrained}


def save(directory: str, record: dict) -> None:
  gio.atomic_write_text(os.path.join(directory, FILES[record['kind']]),
                        json.dumps(record, indent=2) + '\n')


def exists(directory: str, kind: str) -> bool:
  return os.path.isfile(os.path.join(directory, FILES[kind]))


def _kind_in(directory: str) -> str:
  for kind in FILES:
    if exists(directory, kind):
      return kind
  raise UserError(f'no trained model in {directory} (missing {" or ".join(FILES.values())})')


def read(directory: str, kind: Optional[str] = None) -> dict:
  """The record of `kind` in `directory` (any kind when None), 'kind' filled in."""
  kind = kind or _kind_in(directory)
  path = os.path.join(directory, FILES[kind])
  if not os.path.isfile(path):
    raise UserError(f'no trained {kind} in {directory} (missing {FILES[kind]}): run the '
                    f'{_STAGES[kind]} stage first (--config.stages={_STAGES[kind]}); a workdir '
                    'trained by an older version has no record: train it again')
  try:
    with open(path) as f:
      record = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f'{path}: unreadable model record ({e})') from None
  if kind == CLASSIFIER:
    record = dict(record, model=_current_model_keys(record.get('model', {}), path))
  return dict(record, kind=kind)


def _current_model_keys(model: dict, path: str) -> dict:
  """A classifier record's `model` under today's key names: records written before a rename
  of `config.RENAMED` (model.num_steps, model.drop_rate) still load, and those written before a
  key of `classifier.ARCH_KEYS_ADDED` existed get its value; another key it lacks is an error
  naming the record."""
  from gwsss_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from gwsss_jax.models import classifier  # pylint: disable=g-import-not-at-top
  renamed = config_lib.current_names({f'model.{k}': v for k, v in model.items()})
  model = {**classifier.ARCH_KEYS_ADDED, **{k[len('model.'):]: v for k, v in renamed.items()}}
  missing = [k for k in classifier.ARCH_KEYS if k not in model]
  if missing:
    raise UserError(f'{path}: the record lacks model.{", model.".join(missing)} (written by an '
                    'older version): train the classifier again')
  return model


def check_matches(record: dict, config) -> None:
  """UserError naming the config key where `config` describes another network than `record`
  (the CAM stages and eval_seg build from the record and read the grouping or classes from
  the config)."""
  if record['kind'] == CLASSIFIER:
    pairs = [(f'model.{k}', config.model[k], v) for k, v in record['model'].items()]
    pairs.append(('data.num_classes', config.data.num_classes, record['num_classes']))
  else:
    pairs = [(f'seg.{k}', config.seg[k], record[k]) for k in SEG_ARCH_KEYS]
  for key, want, got in pairs:
    if want != got:
      raise UserError(f'config.{key}={want!r}, but the {record["kind"]} in the workdir was '
                      f'trained with {got!r}')


def build(record: dict):
  """The module that `record` describes."""
  if record.get('kind', SEGMENTER) == CLASSIFIER:
    from gwsss_jax.models import classifier  # pylint: disable=g-import-not-at-top
    return classifier.build_classifier(SimpleNamespace(**record['model']), record['num_classes'])
  from gwsss_jax.models import deeplab  # pylint: disable=g-import-not-at-top
  seg = SimpleNamespace(model=record['model'], width=record['width'],
                        output_stride=record['output_stride'],
                        num_classes=record['num_classes'],
                        dtype=record.get('dtype', 'float32'))
  return deeplab.build_segmenter(seg, caffe_layout=bool(record.get('caffe_layout')))


def _init(module, record: dict):
  size = 32 * 8  # any size the network accepts: only the variables' shapes are used
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(0)}
  if record['kind'] == CLASSIFIER:
    k = record['model']['num_nodes']
    return module.init(rngs, jnp.zeros((1, k, size, size, 3)), jnp.ones((1, k, k)), train=False)
  return module.init(rngs, jnp.zeros((1, size, size, 3)), train=False)


def load(directory: str, kind: Optional[str] = None, config=None) -> tuple:
  """(module, variables, record with the checkpoint's 'step') of the trained network in
  `directory`: variables are {'params', 'batch_stats'} as host arrays ('batch_stats' left out
  of a classifier without any). With `config`, a network other than the one it describes is
  refused (`check_matches`)."""
  record = read(directory, kind)
  if config is not None:
    check_matches(record, config)
  module = build(record)
  shapes = jax.eval_shape(lambda: _init(module, record))
  template = {'params': shapes['params'], 'batch_stats': shapes.get('batch_stats', {})}
  ckpt = checkpoint.Checkpointer(directory, max_to_keep=None, asynchronous=False)  # prunes nothing
  try:
    step, variables = ckpt.restore_latest(template, partial=True)
  finally:
    ckpt.close()
  if step is None:
    raise UserError(f'no checkpoint in {directory}: run the {_STAGES[record["kind"]]} stage first')
  if record['kind'] == CLASSIFIER and not jax.tree.leaves(variables['batch_stats']):
    variables = {'params': variables['params']}
  return module, variables, dict(record, step=step)
