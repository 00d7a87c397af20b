"""Stage `train_seg`: DeepLab-v2 (or LargeFOV) trained on the pseudo labels with DeepLab's
schedule (`config.seg`): SGD with momentum and weight decay, poly learning-rate decay (power
0.9), random scaling, cropping and mirroring, ignore label 255, optional MSC loss.

Labels: `<workdir>/pseudo_labels/<name>.png` (the `pseudo_labels` stage) of
`config.data.train_split`; with `config.seg.oracle=True` the ground-truth masks instead, into a
separate run (`seg_oracle_checkpoints`, metrics `train_seg_oracle/...`) that gives the upper
bound beside the pseudo-label run in the same workdir.

Resumable: the run continues from its latest checkpoint and skips when it is complete. The
data-parallel loop, checkpoints and logging are `gwsss_jax.train`'s.
"""

import concurrent.futures
import os

import jax
import numpy as np
from absl import logging

from gwsss_jax.cams import pseudo
from gwsss_jax.common.errors import UserError
from gwsss_jax.data import datasets
from gwsss_jax.data import input_pipeline
from gwsss_jax.data import palette
from gwsss_jax.seg import common
from gwsss_jax.train import artifact
from gwsss_jax.train import checkpoint
from gwsss_jax.train import parallel
from gwsss_jax.train import steps
from gwsss_jax.train import trainer
from gwsss_jax.train import writers


def label_source(config, workdir: str, dataset) -> str | None:
  """The label directory of the run (None = the dataset's ground-truth masks)."""
  if config.seg.oracle:
    datasets.require_masks(config, dataset)
    datasets.check_mask_values(dataset, config.data)
    return None
  directory = pseudo.label_dir(workdir)
  if not os.path.isdir(directory):
    raise UserError(f'{directory}: no pseudo labels; run the pseudo_labels stage first '
                    '(--config.stages=...,pseudo_labels,train_seg) or set config.seg.oracle=True '
                    'to train on the ground truth')
  check_labelled_fraction(config, directory, dataset)
  return directory


def check_labelled_fraction(config, label_dir: str, dataset) -> None:
  """Stops when the pseudo labels of the training set label fewer pixels than
  `seg.min_labelled_fraction` (labels not written yet are left to the input pipeline)."""
  floor = config.seg.min_labelled_fraction
  paths = [p for p in (os.path.join(label_dir, ex.name + '.png') for ex in dataset.examples)
           if os.path.isfile(p)]
  if not floor or not paths:
    return

  def count(path):
    label = palette.read_label_png(path)
    return int(np.count_nonzero(label != palette.IGNORE)), label.size
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    labelled, pixels = np.sum(list(pool.map(count, paths)), axis=0)
  fraction = labelled / max(pixels, 1)
  if fraction < floor:
    raise UserError(
        f'only {fraction:.4%} of the pseudo-label pixels in {label_dir} are labelled (not 255), '
        f'below config.seg.min_labelled_fraction={floor}: DeepLab would learn nothing. Likely '
        f'cause: the CAM background threshold (config.cams.bg_threshold='
        f'{config.cams.bg_threshold}) or the pseudo.* thresholds ignore nearly everything; see '
        'the coverage figures of eval_cams (eval_cams/pseudo_label_coverage, the sweep of '
        'cam_miou_sweep) and rerun pseudo_labels, or set config.seg.min_labelled_fraction=0 '
        'to train anyway')


def create_state(config, module, pretrained, pretrained_head=()):
  """(host train state, tx, {group: schedule}) at step 0, with the pretrained weights."""
  variables = common.init_variables(module, config, config.seed)
  if pretrained is not None:
    variables = common.apply_pretrained(variables, pretrained, pretrained_head)
  tx, learning_rates = common.optimizer(config, variables['params'], pretrained_head)
  return trainer.init_state(variables['params'], variables['batch_stats'], tx,
                            config.seed), tx, learning_rates


def restore_state(config, module, ckpt, info: dict):
  """(step, host train state, tx, {group: schedule}) of the newest readable checkpoint (a
  corrupt newer one is set aside with a warning); step 0 and no state when none reads back."""
  shapes = jax.eval_shape(lambda: common.init_variables(module, config, 0))
  tx, learning_rates = common.optimizer(config, shapes['params'], info.get('pretrained_head', ()))
  step, state = ckpt.restore_latest(
      trainer.abstract_state(shapes['params'], shapes['batch_stats'], tx))
  return step or 0, state, tx, learning_rates


def run(config, workdir: str) -> dict:
  g = config.seg
  names = common.run_names(g.oracle)
  directory = common.checkpoint_dir(config, workdir)
  ckpt = checkpoint.Checkpointer(directory, max_to_keep=config.seg.max_to_keep)
  start = 0
  if ckpt.all_steps():  # weights from the checkpoint; the run's conventions from its record
    info = artifact.read(directory)
    module = common.build_model(config, info['caffe_layout'])
    start, state, tx, learning_rates = restore_state(config, module, ckpt, info)
  if start >= g.num_steps:
    print(f'[{names.train}] complete at step {start}; skipping', flush=True)
    ckpt.close()
    return {}
  if start:
    print(f'[{names.train}] resuming from step {start}', flush=True)
  else:
    pretrained, meta = common.load_pretrained(g)
    info = common.model_info(config, meta, pretrained)
    module = common.build_model(config, info['caffe_layout'])
    state, tx, learning_rates = create_state(config, module, pretrained,
                                             info.get('pretrained_head', ()))

  dp = parallel.DataParallel(config.parallel.impl, parallel.make_mesh(), g.batch_size,
                             batch_key='seg.batch_size')
  dataset = datasets.load_split(config, config.data.train_split)
  label_dir = label_source(config, workdir, dataset)
  batches = input_pipeline.seg_train_iterator(
      dataset, config, label_dir=label_dir, global_batch=g.batch_size, start_step=start,
      normalization=info['normalization'], process_index=dp.process_index,
      process_count=dp.process_count)
  logging.info('%s: %d images, labels from %s', names.train, len(dataset),
               label_dir or 'the ground truth')

  if jax.process_index() == 0:
    artifact.save(directory, info)
  loss_fn = steps.segmentation_loss_fn(module, g.msc)
  train_step = dp.compile(trainer.make_train_step(loss_fn, tx))
  logdir = os.path.join(workdir, 'tensorboard', names.train)
  writer = writers.create_writer(logdir)
  spec = trainer.Fit(name=names.train, lr_key='seg.base_lr',
                     total_steps=g.num_steps, log_every=g.log_every_steps,
                     checkpoint_every=g.checkpoint_every_steps, images_per_step=g.batch_size,
                     learning_rates=learning_rates,
                     check_step=dp.compile(trainer.make_check_step(loss_fn), donate=False))
  batches = ({'images': b['images'], 'labels': b['labels']} for b in batches)
  _, last = trainer.fit(dp, train_step, trainer.from_checkpoint(dp, state), batches, spec, ckpt,
                        writer, logdir)
  ckpt.close()
  writer.close()
  loss = last.get(f'{names.train}/loss')
  return {} if loss is None else {f'{names.train}/final_loss': loss}
