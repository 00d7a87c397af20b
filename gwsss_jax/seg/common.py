"""What train_seg, eval_seg and predict share: where a run lives in the workdir, the model and
its pretrained initialisation, its record, and DeepLab's optimiser.

A segmentation run is either the pseudo-label run (`config.seg.oracle=False`) or the oracle run
on ground-truth masks (`True`); both can live in one workdir side by side (`RunNames`).
Next to its checkpoints a run records `seg_model.json` (`gwsss_jax.train.artifact`): the
network, input normalisation and ResNet layout it was trained with, so that evaluation and
prediction need neither the pretrained weights, nor a matching `data.normalization`, nor the
training keys of the optimizer.
"""

import dataclasses
import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from gwsss_jax.common.errors import UserError
from gwsss_jax.data import normalization as norm_lib
from gwsss_jax.models import convert
from gwsss_jax.models import deeplab
from gwsss_jax.train import artifact
from gwsss_jax.train import optim

# The network each segmentation model's trunk needs (`meta['arch']` of converted weights).
_ARCHS = {'deeplab_v2_resnet101': ('resnet101', 'resnet101_caffe'),
          'deeplab_largefov_vgg16': ('vgg16',)}


@dataclasses.dataclass(frozen=True)
class RunNames:
  """Workdir names of one segmentation run (pseudo-label or oracle)."""
  train: str            # record, metric prefix, TensorBoard folder: train_seg, train_seg_oracle
  eval: str             # record and metric prefix: eval_seg, eval_seg_oracle
  checkpoints: str      # seg_checkpoints, seg_oracle_checkpoints
  predictions: str      # seg_predictions, seg_oracle_predictions
  iou_table: str        # seg_iou.md, seg_oracle_iou.md
  results: str          # results, results_oracle (VOC test server layout)


def run_names(oracle: bool) -> RunNames:
  tag = 'seg_oracle' if oracle else 'seg'
  suffix = '_oracle' if oracle else ''
  return RunNames(train=f'train_seg{suffix}', eval=f'eval_seg{suffix}',
                  checkpoints=f'{tag}_checkpoints', predictions=f'{tag}_predictions',
                  iou_table=f'{tag}_iou.md', results=f'results{suffix}')


def checkpoint_dir(config, workdir: str) -> str:
  return os.path.join(workdir, run_names(config.seg.oracle).checkpoints)


def load_pretrained(seg_config) -> tuple[Optional[dict], Optional[dict]]:
  """(variables, meta) of `config.seg.pretrained`, or (None, None) when it is empty."""
  if not seg_config.pretrained:
    return None, None
  variables, meta = convert.load_pretrained(seg_config.pretrained, config_key='seg.pretrained')
  if meta['arch'] not in _ARCHS[seg_config.model]:
    raise UserError(f'config.seg.pretrained={seg_config.pretrained!r} holds {meta["arch"]} '
                    f'weights; config.seg.model={seg_config.model!r} needs '
                    f'{" or ".join(_ARCHS[seg_config.model])}')
  return variables, meta


def resolve_normalization(config, meta: Optional[dict]) -> dict:
  """The input pipeline's normalisation spec: `data.normalization`, where 'auto' means the
  convention stored with the pretrained weights, mean included ('imagenet_rgb' without any)."""
  if config.data.normalization == 'auto' and meta is not None:
    return norm_lib.resolve(meta['normalization'])
  return convert.normalization_for(config.data.normalization, '')


def model_info(config, meta: Optional[dict], pretrained: Optional[dict] = None) -> dict:
  """What `seg_model.json` records about a run (`pretrained`: the weights, for the head
  modules they initialise)."""
  g = config.seg
  return {'kind': artifact.SEGMENTER, 'model': g.model, 'width': g.width,
          'output_stride': g.output_stride, 'num_classes': g.num_classes,
          'caffe_layout': deeplab.caffe_layout(meta),
          'normalization': resolve_normalization(config, meta),
          'pretrained': g.pretrained, 'oracle': bool(g.oracle), 'dtype': g.dtype,
          'pretrained_head': pretrained_head(config, pretrained)}


def pretrained_head(config, pretrained: Optional[dict]) -> list:
  """Head modules that the pretrained weights initialise and that then train at the trunk's
  rate: LargeFOV's fc6/fc7 when the weights carry VGG16's fully connected layers
  (`convert.LARGEFOV_FC`) in the model's shapes (full width)."""
  fc = pretrained.get(convert.LARGEFOV_FC) if pretrained and 'backbone' in pretrained else None
  if fc is None or config.seg.model != 'deeplab_largefov_vgg16':
    return []
  module = build_model(config, caffe_layout=False)
  model = jax.eval_shape(lambda: init_variables(module, config, 0))['params']
  return [name for name in ('fc6', 'fc7')
          if jax.tree.map(np.shape, fc[name]) == jax.tree.map(np.shape, model[name])]


def build_model(config, caffe_layout: bool):
  return deeplab.build_segmenter(config.seg, caffe_layout)


def init_variables(module, config, seed) -> dict:
  """Randomly initialised {'params', 'batch_stats'} for crops of `config.seg.crop_size`.

  `seed` is an int or a PRNG key. An int becomes an 'rbg' key: XLA:CPU compiles its random bits for
  the many kernel shapes of a DeepLab much faster than threefry's, whose compilation would
  dominate a short CPU run.
  """
  size = config.seg.crop_size
  init = jax.jit(lambda key: module.init({'params': key, 'dropout': key},
                                         jnp.zeros((1, size, size, 3)), train=False))
  key = jax.random.key(seed, impl='rbg') if isinstance(seed, int) else seed
  variables = init(key)
  return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}


def apply_pretrained(variables: dict, pretrained: dict, head: Sequence[str] = ()) -> dict:
  """Places converted weights into `variables`: the trunk always; DeepLab's COCO ASPP too when
  its class count matches (21 VOC classes), otherwise the ASPP stays freshly initialised; and
  the head modules in `head` (`pretrained_head`: LargeFOV's fc6/fc7) from the weights'
  `convert.LARGEFOV_FC`."""
  backbone = convert.backbone_variables(pretrained)
  params = convert.merge_pretrained(variables['params'], backbone['params'], 'backbone')
  batch_stats = variables['batch_stats']
  if backbone.get('batch_stats'):
    batch_stats = convert.merge_pretrained(batch_stats, backbone['batch_stats'], 'backbone')
  aspp = pretrained.get('aspp') if 'backbone' in pretrained else None
  if aspp is not None and 'aspp' in params:
    shapes = jax.tree.map(np.shape, params['aspp'])
    if jax.tree.map(np.shape, aspp) == shapes:
      params = convert.merge_pretrained(params, aspp, 'aspp')
  for name in head:
    params = convert.merge_pretrained(params, pretrained[convert.LARGEFOV_FC][name], name)
  return {'params': params, 'batch_stats': batch_stats}


def optimizer(config, params, pretrained_head=()) -> tuple[optax.GradientTransformation, dict]:
  """DeepLab's SGD (momentum, weight decay, poly decay) with `deeplab.param_labels` groups.

  The groups run at `seg.base_lr` times 1 (trunk weights), `seg.backbone_bias_lr_mult`,
  `seg.new_lr_mult` and `seg.new_bias_lr_mult` (head weights and biases; Caffe `lr_mult` 1/2 and
  10/20 by default); weight decay applies to weights only (`decay_mult: 0` on biases), added to
  the gradient before the momentum as Caffe and PyTorch do.
  With `seg.head_warmup_steps` = N > 0 the backbone is held still for the first N steps (no
  update, no momentum) while the new head trains, then joins at the poly rate of step N.
  `pretrained_head` (`model_info`'s record) names head modules that train in the trunk's
  groups. Returns (tx, {group: schedule}); the backbone schedules report 0 while held.
  """
  g = config.seg
  def poly(mult):
    return optim.poly_schedule(g.base_lr * mult, g.num_steps, g.poly_power)
  lr_by_label = {deeplab.BACKBONE_WEIGHT: poly(1.0),
                 deeplab.BACKBONE_BIAS: poly(g.backbone_bias_lr_mult),
                 deeplab.HEAD_WEIGHT: poly(g.new_lr_mult),
                 deeplab.HEAD_BIAS: poly(g.new_bias_lr_mult), deeplab.FROZEN: None}
  warmup = int(g.head_warmup_steps)
  hold_steps = {deeplab.BACKBONE_WEIGHT: warmup, deeplab.BACKBONE_BIAS: warmup}
  labels = deeplab.param_labels(params, pretrained_head)
  flat_labels = traverse_util.flatten_dict(labels)
  tx = optax.chain(
      optax.masked(optax.add_decayed_weights(g.weight_decay),
                   jax.tree.map(lambda l: l in (deeplab.BACKBONE_WEIGHT, deeplab.HEAD_WEIGHT),
                                labels)),
      optim.build_sgd(params, lambda path: flat_labels[path], lr_by_label,
                      momentum=g.momentum, nesterov=False, weight_decay=0.0,
                      hold_steps=hold_steps))
  used = set(flat_labels.values())
  reported = {k: optim.held_schedule(v, hold_steps[k]) if hold_steps.get(k) else v
              for k, v in lr_by_label.items() if v is not None and k in used}
  return tx, reported

