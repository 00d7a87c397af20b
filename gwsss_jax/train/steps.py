"""Per-device losses and initialisation of the two trained models (`trainer.make_train_step`).

The stages (`stages/train_cls.py`, `stages/train_seg.py`) read data and so import the input
pipeline (TensorFlow); this module imports only JAX and the models, so `gwsss_jax.bench` and
`benchmarks/device_check.py` build exactly the stages' training steps on a machine without
TensorFlow, tfds or clu (tests/test_no_tensorflow.py holds that).
"""

import jax
import jax.numpy as jnp

from gwsss_jax import config as config_lib
from gwsss_jax.cams import export
from gwsss_jax.common.errors import UserError
from gwsss_jax.models import classifier
from gwsss_jax.models import convert
from gwsss_jax.seg import losses
from gwsss_jax.train import trainer


def init_classifier(model, config, rng) -> dict:
  """Fresh variables at the training input size ({'params', ['batch_stats']}), shapes only
  being computed when `rng` is None (a restore template)."""
  k, c = config.model.num_nodes, config_lib.input_size(config)
  images = jnp.zeros((1, k, c, c, 3), jnp.float32)
  adjacency = jnp.ones((1, k, k), jnp.float32)
  init = lambda r: model.init(r, images, adjacency, train=False)
  if rng is None:
    return jax.eval_shape(init, jax.random.key(0))
  return trainer.run_init(init, rng)


def with_pretrained(config, variables) -> dict:
  """Merges `model.pretrained` into the backbone of `variables` (from-scratch when '')."""
  path = config.model.pretrained
  if not path:
    return variables
  weights, meta = convert.load_pretrained(path)
  if not str(meta.get('arch', '')).startswith(config.model.backbone):
    raise UserError(f'config.model.pretrained={path!r} holds {meta.get("arch")} weights, '
                    f'config.model.backbone is {config.model.backbone!r}')
  weights = convert.backbone_variables(weights)
  out = dict(variables)
  for collection in ('params', 'batch_stats'):
    if collection in weights and collection in variables:
      out[collection] = convert.merge_pretrained(variables[collection], weights[collection])
  return out


def oaa_readouts(config) -> tuple:
  """The readouts the OAA store accumulates: `cams.source`, or all three."""
  return export.READOUTS if config.cams.oaa_all_readouts else (config.cams.source,)


def classifier_loss_fn(model, config, with_cams: bool):
  """`loss_fn(params, batch_stats, batch, rng)` of `trainer.make_train_step` (Eq. 12).

  Per-example outputs: sigmoid probabilities of the graph readout [b, K, L] and, for OAA,
  {readout: export CAMs} (`classifier.cams_for_export`, the readouts of `oaa_readouts`) of the
  members OAA reads: [b, 1, h, w, L] for the anchors (`cams.oaa_members='anchor'`), else
  [b, K, h, w, L].
  """
  anchors_only = config.cams.oaa_members == 'anchor'
  readouts = oaa_readouts(config)
  train_bn = bool(not config.model.freeze_bn)

  def loss_fn(params, batch_stats, batch, rng):
    variables = {'params': params}
    if batch_stats:
      variables['batch_stats'] = batch_stats
    mutable = ['batch_stats'] if (train_bn and batch_stats) else False
    result = model.apply(variables, batch['images'], batch['adjacency'], train=True,
                         rngs={'dropout': rng}, mutable=mutable)
    (logits, out), new_stats = result if mutable else (result, {})
    loss, terms = classifier.loss_fn(logits, out, batch['labels'], config.model)
    per_example = {'probs': jax.nn.sigmoid(logits)}
    if with_cams:
      members = slice(0, 1) if anchors_only else slice(None)
      per_example['cams'] = {r: classifier.cams_for_export(out, batch['labels'], r)[:, members]
                             for r in readouts}
    return loss, (terms, new_stats.get('batch_stats', batch_stats), per_example)
  return loss_fn


def segmentation_loss_fn(module, msc: bool):
  """`loss_fn(params, batch_stats, batch, rng)` for `trainer.make_train_step`.

  BatchNorm is frozen (DeepLab-v2), so the statistics pass through unchanged.
  """
  def loss_fn(params, batch_stats, batch, rng):
    variables = {'params': params, 'batch_stats': batch_stats}

    def apply_fn(images, index):
      return module.apply(variables, images, train=True,
                          rngs={'dropout': jax.random.fold_in(rng, index)})
    loss, scalars = losses.segmentation_loss(apply_fn, batch['images'], batch['labels'], msc)
    return loss, (scalars, batch_stats, {})
  return loss_fn
