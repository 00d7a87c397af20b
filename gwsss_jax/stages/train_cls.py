"""Stage `train_cls`: the group-wise classifier, trained data-parallel with the paper's schedule.

Per step, a global batch of `train.batch_size` groups of K images (split over all devices of all
hosts) goes through the classifier; the loss is Eq. (12); SGD as in the paper and the release
(`train.optim.classifier_optimizer`). With `cams.method='oaa'` each step's self-ensembled CAMs (of
the anchors, or of every member: `cams.oaa_*`) are merged into the OAA store (online attention
accumulation, `cams.oaa.accumulate_groups`), which the `export_cams` stage reads.

Resumable: checkpoints go to `<workdir>/cls_checkpoints` every `train.checkpoint_every_steps`, at
each epoch end and at the end; a restarted run continues from the latest one (the input pipeline
is deterministic in the step), and a run whose final checkpoint exists is skipped.
The run's record (`gwsss_jax.train.artifact`, `cls_model.json`) gives the trained model to later
stages.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from gwsss_jax.common.errors import UserError
from gwsss_jax.data import datasets
from gwsss_jax.data import input_pipeline
from gwsss_jax.data import normalization as norm_lib
from gwsss_jax.evaluation import metrics as metrics_lib
from gwsss_jax.models import classifier
from gwsss_jax.models import convert
from gwsss_jax.train import artifact
from gwsss_jax.train import checkpoint
from gwsss_jax.train import optim
from gwsss_jax.train import parallel
from gwsss_jax.train import steps
from gwsss_jax.train import trainer
from gwsss_jax.train import writers

NAME = 'train_cls'


def schedule(config, num_examples: int) -> tuple[int, int]:
  """(steps per epoch, total steps); `train.max_steps` > 0 stops early."""
  spe = input_pipeline.steps_per_epoch(num_examples * config.train.repeats_per_epoch,
                                       config.train.batch_size)
  if spe < 1:
    raise UserError(f'config.train.batch_size={config.train.batch_size}: larger than the '
                    f'{num_examples} groups of one epoch of {config.data.train_split!r}')
  total = spe * config.train.num_epochs
  if config.train.max_steps > 0:
    total = min(total, config.train.max_steps)
  return spe, total


def normalization(config, workdir: str) -> dict:
  """The input convention of the run (a `data.normalization` spec: the one stored with the
  pretrained weights under 'auto'), recorded with its checkpoints once training starts, so that
  resumed runs use the one it trained with."""
  directory = artifact.classifier_dir(workdir)
  if artifact.exists(directory, artifact.CLASSIFIER):
    return norm_lib.resolve(artifact.read(directory, artifact.CLASSIFIER)['normalization'])
  return norm_lib.resolve(
      convert.normalization_for(config.data.normalization, config.model.pretrained))


def make_eval_fn(model, num_nodes: int):
  """Per-device scoring of held-out images: [n, H, W, 3] padded -> class probabilities [n, L].

  The score is the intermediate readout l^m (Eq. 12's second term): it depends on the image
  alone, whereas the graph readout needs a group linked by labels, which held-out images do not
  give. Images ride K at a time through the classifier (the grouping does not change l^m); the
  readout's average pools only the valid (unpadded) part of each class map.
  """
  def eval_fn(variables, batch):
    images = batch['images']
    n, height = images.shape[0], images.shape[1]
    groups = images.reshape((n // num_nodes, num_nodes) + images.shape[1:])
    adjacency = jnp.broadcast_to(jnp.eye(num_nodes), (n // num_nodes, num_nodes, num_nodes))
    _, out = model.apply(variables, groups, adjacency, train=False)
    cams = out['cam_mid'].reshape((n,) + out['cam_mid'].shape[2:])      # [n, h, w, L]
    h, w = cams.shape[1:3]
    stride_h, stride_w = height / h, images.shape[2] / w
    rows = jnp.arange(h)[None, :] < jnp.ceil(batch['hw'][:, :1] / stride_h)
    cols = jnp.arange(w)[None, :] < jnp.ceil(batch['hw'][:, 1:] / stride_w)
    mask = (rows[:, :, None] & cols[:, None, :]).astype(jnp.float32)[..., None]
    logits = (cams * mask).sum((1, 2)) / jnp.maximum(mask.sum((1, 2)), 1.0)
    return {'probs': jax.nn.sigmoid(logits)}
  return eval_fn


def _evaluate_fn(config, model, dp, dataset, norm):
  """`evaluate(state) -> {'mAP', 'f1'}` on `data.val_split` (None when it has no labels), at
  `train.eval_resolution`."""
  if dataset is None or not len(dataset) or not dataset.label_matrix().any():
    return None
  k = config.model.num_nodes
  per_device = max(dp.per_device, 1) * k
  predict = dp.compile_predict(make_eval_fn(model, k))
  labels = dataset.label_matrix()
  # At the training scale by default: full resolution pads every image to the largest one and
  # can cost more than an epoch of training on small crops.
  resize = max(config.data.resize, input_pipeline.input_size(config)) if (
      config.train.eval_resolution == 'train') else 0

  def evaluate(state):
    variables = {'params': state['params']}
    if jax.tree.leaves(state['batch_stats']):
      variables['batch_stats'] = state['batch_stats']
    probs, index = [], []
    for batch in input_pipeline.eval_iterator(
        dataset, config, batch_size=per_device * len(dp.local_devices), normalization=norm,
        process_index=dp.process_index, process_count=dp.process_count, with_masks=False,
        resize=resize, square=config.data.resize_mode == 'square'):
      out = dp.local_rows(predict(variables, dp.shard_batch(
          {'images': batch['images'], 'hw': batch['hw']})))
      valid = np.asarray(batch['valid'], bool)
      probs.append(out['probs'][valid])
      index.append(np.asarray(batch['index'])[valid])
    probs, index = np.concatenate(probs), np.concatenate(index)
    if dp.process_count > 1:
      probs = _gather_rows(probs)
      index = _gather_rows(index)
    return metrics_lib.classification_metrics(probs, labels[index])
  return evaluate


def _gather_rows(x: np.ndarray) -> np.ndarray:
  """Concatenates every process's rows (padded to the longest for the all-gather)."""
  counts = multihost_utils.process_allgather(np.asarray([x.shape[0]]))
  padded = np.zeros((int(np.max(counts)),) + x.shape[1:], x.dtype)
  padded[:x.shape[0]] = x
  gathered = multihost_utils.process_allgather(padded)
  return np.concatenate([g[:int(c)] for g, c in zip(gathered, np.ravel(counts))])


def run(config, workdir: str) -> dict:
  """Trains (or resumes) the classifier; returns final loss, held-out mAP/F1 and steps."""
  train_set = datasets.load_split(config, config.data.train_split)
  spe, total = schedule(config, len(train_set))
  directory = artifact.classifier_dir(workdir)
  ckpt = checkpoint.Checkpointer(directory, max_to_keep=config.train.max_to_keep)
  model = classifier.build_classifier(config.model, config.data.num_classes)
  shapes = steps.init_classifier(model, config, None)
  tx, learning_rates = optim.classifier_optimizer(
      config.train, shapes['params'], shapes.get('batch_stats', {}), config.model.freeze_bn, spe)
  # The newest readable checkpoint (a corrupt one is set aside with a warning), also when the
  # run looks complete: a stage is only skipped over a final checkpoint that reads back.
  start, state = ckpt.restore_latest(
      trainer.abstract_state(shapes['params'], shapes.get('batch_stats', {}), tx))
  start = start or 0
  if start >= total:
    print(f'[{NAME}] complete at step {start}; skipping', flush=True)
    ckpt.close()
    return {}  # the figures of the finished run stay in metrics/train_cls.json

  norm = normalization(config, workdir)
  if start:
    batch_stats = shapes.get('batch_stats', {})
    print(f'[{NAME}] resuming from step {start} of {total}', flush=True)
  else:
    variables = steps.with_pretrained(
        config, steps.init_classifier(model, config, jax.random.key(config.seed)))
    batch_stats = variables.get('batch_stats', {})
    state = trainer.init_state(variables['params'], batch_stats, tx, config.seed)
    if jax.process_index() == 0:
      artifact.save(directory, artifact.classifier_record(config, norm))

  dp = parallel.DataParallel(config.parallel.impl, parallel.make_mesh(),
                             config.train.batch_size)
  oaa_store, on_step, before_save = None, None, None
  if config.cams.method == 'oaa':
    oaa_store, on_step, before_save = _oaa_hooks(config, workdir, dp, model, train_set,
                                                 start, spe, total)
  val_set = datasets.load_split(config, config.data.val_split) if config.data.val_split else None
  logdir = os.path.join(workdir, 'tensorboard', NAME)
  writer = writers.create_writer(logdir)
  spec = trainer.Fit(
      name=NAME, total_steps=total, steps_per_epoch=spe, log_every=config.train.log_every_steps,
      checkpoint_every=config.train.checkpoint_every_steps,
      eval_every_epochs=config.train.eval_every_epochs,
      images_per_step=config.train.batch_size * config.model.num_nodes,
      profile_steps=config.train.profile_steps, learning_rates=learning_rates,
      evaluate=_evaluate_fn(config, model, dp, val_set, norm), on_step=on_step,
      before_save=before_save, device_keys=('images', 'labels', 'adjacency'))
  loss_fn = steps.classifier_loss_fn(model, config, oaa_store is not None)
  spec.check_step = dp.compile(trainer.make_check_step(loss_fn), donate=False)
  train_step = dp.compile(trainer.make_train_step(
      loss_fn, tx,
      update_batch_stats=bool(not config.model.freeze_bn and jax.tree.leaves(batch_stats))))
  logging.info('%s: %d images, %d steps/epoch, %d steps, %d devices (%s)', NAME, len(train_set),
               spe, total, dp.num_devices, dp.impl)
  _, last = trainer.fit(dp, train_step, trainer.from_checkpoint(dp, state),
                        _batches(config, train_set, dp, start, spe, norm), spec, ckpt, writer,
                        logdir)
  ckpt.close()
  writer.close()
  result = {f'{NAME}/steps': total}
  for key, name in (('loss', 'final_loss'), ('mAP', 'mAP'), ('f1', 'f1')):
    if f'{NAME}/{key}' in last:
      result[f'{NAME}/{name}'] = last[f'{NAME}/{key}']
  return result


def _batches(config, dataset, dp, start: int, spe: int, norm):
  """This process's batches from global step `start` on, epoch after epoch."""
  epoch, offset = divmod(start, spe)
  while True:
    for batch in input_pipeline.train_iterator(
        dataset, config, num_nodes=config.model.num_nodes, global_batch=config.train.batch_size,
        epoch=epoch, start_batch=offset, normalization=norm, process_index=dp.process_index,
        process_count=dp.process_count):
      yield batch
    epoch, offset = epoch + 1, 0


def _oaa_hooks(config, workdir, dp, model, dataset, start, spe, total):
  """The OAA store and the fit callbacks that feed and flush it."""
  from gwsss_jax.cams import oaa  # pylint: disable=g-import-not-at-top
  size = input_pipeline.input_size(config)
  shapes = jax.eval_shape(
      lambda v: model.apply(v, jnp.zeros((1, config.model.num_nodes, size, size, 3)),
                            jnp.ones((1, config.model.num_nodes, config.model.num_nodes)),
                            train=False), steps.init_classifier(model, config, None))
  map_hw = shapes[1]['cam_mid'].shape[2:4]
  store = oaa.OAAStore.open(workdir, dataset.label_matrix(), map_hw, reset=start == 0,
                            readouts=steps.oaa_readouts(config))
  last_epoch = (total - 1) // spe

  def on_step(step, host_batch, per_example):
    epoch = (step - 1) // spe
    if epoch < config.cams.oaa_first_epoch:
      return  # nothing to accumulate: skip the device-to-host copy
    rows = dp.local_rows(per_example)
    oaa.accumulate_groups(store, config.cams, epoch, last_epoch, host_batch['index'],
                          rows['cams'], rows['probs'], boxes=host_batch['boxes'],
                          flips=host_batch['flips'], rounds=host_batch['round'])
  return store, on_step, store.flush

