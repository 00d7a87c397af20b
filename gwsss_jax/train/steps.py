"""Per-device losses and initialisation of the two trained models (`trainer.make_train_step`).

The stages (`stages/train_cls.py`, `stages/train_seg.py`) read data and so import the input
pipeline (TensorFlow); this module imports only JAX and the models, so `gwsss_jax.bench` and
`benchmarks/device_check.py` build exactly the stages' training steps on a machine without
TensorFlow, tfds or clu (tests/test_no_tensorflow.py holds that).
"""

import jax
import jax.numpy as jnp

from gwsss_jax.models import classifier
from gwsss_jax.seg import losses
from gwsss_jax.train import trainer


def init_classifier(model, config, rng) -> dict:
  """Fresh variables at the training input size ({'params', ['batch_stats']}), shapes only
  being computed when `rng` is None (a restore template)."""
  k, c = config.model.num_nodes, config.data.crop_size
  images = jnp.zeros((1, k, c, c, 3), jnp.float32)
  adjacency = jnp.ones((1, k, k), jnp.float32)
  init = lambda r: model.init(r, images, adjacency, train=False)
  if rng is None:
    return jax.eval_shape(init, jax.random.key(0))
  return trainer.run_init(init, rng)


def classifier_loss_fn(model, config, with_cams: bool):
  """`loss_fn(params, batch_stats, batch, rng)` of `trainer.make_train_step` (Eq. 12).

  Per-example outputs: sigmoid probabilities of the graph readout [b, K, L] and, for OAA,
  the export CAMs [b, K, h, w, L] (`classifier.cams_for_export`).
  """
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
      per_example['cams'] = classifier.cams_for_export(out, batch['labels'])
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
