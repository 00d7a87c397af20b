"""Segmentation inference, loss and the train_seg / eval_seg stages on the built-in dataset.

Numbers are checked against torch (interpolation, cross-entropy) and against an mIoU computed
here from the written PNGs; the stages run a few steps of a tiny DeepLab-LargeFOV.
"""

import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gwsss_jax import config as config_lib
from gwsss_jax.common.errors import UserError
from gwsss_jax.data import datasets
from gwsss_jax.data import input_pipeline
from gwsss_jax.data import palette
from gwsss_jax.models import deeplab
from gwsss_jax.seg import common
from gwsss_jax.seg import inference
from gwsss_jax.seg import losses
from gwsss_jax.stages import eval_seg
from gwsss_jax.stages import train_seg
from gwsss_jax.train import artifact
from gwsss_jax.train import parallel
from gwsss_jax.train import steps
from gwsss_jax.train import trainer
from random_weights import he_normal


class _PooledLinear(nn.Module):
  """Stride-4 average pool + 1x1 conv: position-independent, so a constant image gives
  constant logits at every scale."""
  num_classes: int = 3

  @nn.compact
  def __call__(self, x):
    return nn.Conv(self.num_classes, (1, 1))(nn.avg_pool(x, (4, 4), (4, 4)))


def _linear_params(rng, channels=3, classes=3):
  return {'params': {'Conv_0': {'kernel': rng.normal(size=(1, 1, channels, classes)).astype(
      np.float32), 'bias': rng.normal(size=(classes,)).astype(np.float32)}}}


def test_multiscale_flip_on_a_constant_image_equals_single_scale():
  rng = np.random.default_rng(0)
  model, variables = _PooledLinear(), _linear_params(rng)
  colour = rng.normal(size=3).astype(np.float32)
  images = jnp.asarray(np.broadcast_to(colour, (2, 32, 40, 3)))
  apply_fn = lambda x: model.apply(variables, x)
  single = np.asarray(jax.jit(lambda x: inference.multiscale_probs(apply_fn, x))(images))
  multi = np.asarray(jax.jit(lambda x: inference.multiscale_probs(
      apply_fn, x, (0.5, 0.75, 1.0, 1.5), True))(images))
  logits = colour @ variables['params']['Conv_0']['kernel'][0, 0] + variables['params'][
      'Conv_0']['bias']
  want = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
  assert multi.shape == (2, 32, 40, 3)
  np.testing.assert_allclose(single, np.broadcast_to(want, single.shape), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(multi, single, rtol=1e-5, atol=1e-6)


def _torch_resize(x_nhwc, hw):
  t = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
  return F.interpolate(t, size=hw, mode='bilinear', align_corners=False).numpy().transpose(
      0, 2, 3, 1)


def test_multiscale_flip_matches_torch():
  rng = np.random.default_rng(1)
  model, variables = _PooledLinear(), _linear_params(rng)
  images = rng.normal(size=(1, 24, 32, 3)).astype(np.float32)
  scales = (0.5, 1.0, 1.25)
  got = np.asarray(jax.jit(lambda x: inference.multiscale_probs(
      lambda y: model.apply(variables, y), x, scales, True))(jnp.asarray(images)))
  kernel = variables['params']['Conv_0']['kernel'][0, 0]
  bias = variables['params']['Conv_0']['bias']

  def net(x):  # the same network in torch
    t = F.avg_pool2d(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), 4)
    return t.numpy().transpose(0, 2, 3, 1) @ kernel + bias
  want = 0
  for s in scales:
    hw = inference.scaled_hw((24, 32), s)
    x = _torch_resize(images, hw) if hw != (24, 32) else images
    for mirrored in (False, True):
      logits = net(x[:, :, ::-1] if mirrored else x)
      logits = _torch_resize(logits, (24, 32))
      logits = logits[:, :, ::-1] if mirrored else logits
      want = want + torch.softmax(torch.from_numpy(np.ascontiguousarray(logits)), -1).numpy()
  np.testing.assert_allclose(got, want / (2 * len(scales)), rtol=1e-4, atol=1e-5)


def test_cross_entropy_ignores_255_like_torch():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(2, 4, 4, 5)).astype(np.float32)
  labels = rng.integers(0, 5, size=(2, 16, 16)).astype(np.int32)
  labels[0, :8] = 255
  got, count = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  up = torch.from_numpy(_torch_resize(logits, (16, 16)).transpose(0, 3, 1, 2).copy())
  want = F.cross_entropy(up, torch.from_numpy(labels).long(), ignore_index=255).item()
  assert int(count) == int((labels != 255).sum())
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  all_ignored, _ = losses.cross_entropy(jnp.asarray(logits), jnp.full((2, 16, 16), 255))
  assert float(all_ignored) == 0.0


def test_msc_loss_is_the_sum_of_four_terms():
  rng = np.random.default_rng(3)
  model, variables = _PooledLinear(), _linear_params(rng)
  images = jnp.asarray(rng.normal(size=(1, 32, 32, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 3, size=(1, 32, 32)), jnp.int32)
  apply_fn = lambda x, i: model.apply(variables, x)
  outputs = losses.msc_outputs(apply_fn, images)
  assert [o.shape for o in outputs] == [(1, 8, 8, 3)] * 4
  np.testing.assert_allclose(outputs[3], np.maximum(np.maximum(outputs[0], outputs[1]),
                                                    outputs[2]))
  total, scalars = losses.segmentation_loss(apply_fn, images, labels, msc=True)
  terms = [float(losses.cross_entropy(o, labels)[0]) for o in outputs]
  np.testing.assert_allclose(float(total), sum(terms), rtol=1e-5)
  np.testing.assert_allclose(float(scalars['loss_050']), terms[2], rtol=1e-5)


def test_training_steps_reduce_the_loss_on_a_fixed_batch():
  # The train_seg step (loss_fn, DeepLab optimiser, data parallel over 4 CPU devices) on one
  # batch repeated: the loss must go down.
  config = config_lib.base_config()
  config.data.num_classes = 2
  config.seg.width = 0.0625
  config.seg.base_lr = 0.01
  config.seg.num_steps = 100
  module = deeplab.DeepLabV2(num_classes=3, width=0.0625, stage_sizes=(1, 1, 1, 1))
  rng = np.random.default_rng(4)
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  variables = he_normal(shapes, rng)
  tx, _ = common.optimizer(config, variables['params'])
  dp = parallel.DataParallel('shard_map', parallel.make_mesh(), 4, 'seg.batch_size')
  step = dp.compile(trainer.make_train_step(steps.segmentation_loss_fn(module, msc=False), tx))
  state = dp.replicate(trainer.init_state(variables['params'], variables['batch_stats'], tx, 0))
  labels = np.zeros((4, 32, 32), np.int32)
  labels[:, 8:24, 8:24] = 1
  labels[:, :, 28:] = 255
  images = rng.normal(size=(4, 32, 32, 3)).astype(np.float32) * 0.1
  images[..., 0] += labels == 1
  batch = dp.shard_batch({'images': images, 'labels': labels})
  history = []
  for _ in range(8):
    state, scalars, _ = step(state, batch)
    history.append(float(dp.unreplicate(scalars)['loss']))
  assert all(np.isfinite(history))
  assert history[-1] < 0.8 * history[0], history


# ------------------------------------------------------------------------------------------
# The stages end to end on the built-in dataset.


def _stage_config(root):
  config = config_lib.base_config()
  config.data.name = 'synthetic'
  config.data.root = root
  config.data.num_classes = 3
  config.data.train_split = 'train'
  config.data.val_split = 'val'
  config.data.synthetic.num_train = 8
  config.data.synthetic.num_val = 3
  config.data.synthetic.size = 48
  config.seg.model = 'deeplab_largefov_vgg16'
  config.seg.width = 0.0625
  config.seg.batch_size = 4
  config.seg.crop_size = 32
  config.seg.num_steps = 3
  config.seg.base_lr = 1e-3
  config.seg.log_every_steps = 1
  config.seg.checkpoint_every_steps = 2
  config.seg.oracle = True
  config.seg.eval_scales = (0.75, 1.0)
  config.seg.eval_flip = True
  return config


@pytest.fixture(scope='module')
def oracle_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('seg'))
  config = _stage_config(os.path.join(workdir, 'data', 'synthetic'))
  datasets.prepare(config, workdir)
  trained = train_seg.run(config, workdir)
  evaluated = eval_seg.run(config, workdir)
  return config, workdir, trained, evaluated


def test_oracle_run_trains_on_ground_truth_into_its_own_directory(oracle_run):
  config, workdir, trained, _ = oracle_run
  assert np.isfinite(trained['train_seg_oracle/final_loss'])
  assert os.path.isdir(os.path.join(workdir, 'seg_oracle_checkpoints', '3'))
  assert not os.path.exists(os.path.join(workdir, 'seg_checkpoints'))
  record = artifact.read(os.path.join(workdir, 'seg_oracle_checkpoints'), artifact.SEGMENTER)
  assert record['normalization']['name'] == 'imagenet_rgb'
  assert train_seg.run(config, workdir) == {}  # complete: skipped


def test_eval_miou_matches_an_independent_computation(oracle_run):
  config, workdir, _, metrics = oracle_run
  dataset = datasets.load_split(config, 'val')
  inter, union = np.zeros(4), np.zeros(4)
  for ex in dataset.examples:
    pred = np.array(palette.read_label_png(
        os.path.join(workdir, 'seg_oracle_predictions', ex.name + '.png')))
    gt = palette.read_label_png(ex.mask_path)
    assert pred.shape == gt.shape
    for c in range(4):
      inter[c] += np.sum((pred == c) & (gt == c))
      union[c] += np.sum(((pred == c) | (gt == c)) & (gt != 255))
  present = union > 0
  np.testing.assert_allclose(metrics['eval_seg_oracle/miou'],
                             np.mean(inter[present] / union[present]), rtol=1e-9)
  names = ('background',) + dataset.class_names
  assert f'eval_seg_oracle/iou_per_class/01_{names[1]}' in metrics
  with open(os.path.join(workdir, 'seg_oracle_iou.md')) as f:
    assert names[1] in f.read()


def test_eval_reuses_predictions_of_the_same_checkpoint(oracle_run):
  config, workdir, _, metrics = oracle_run
  directory = os.path.join(workdir, 'seg_oracle_predictions')
  stamps = {f: os.stat(os.path.join(directory, f)).st_mtime_ns for f in os.listdir(directory)}
  again = eval_seg.run(config, workdir)
  assert again['eval_seg_oracle/miou'] == metrics['eval_seg_oracle/miou']
  assert stamps == {f: os.stat(os.path.join(directory, f)).st_mtime_ns
                    for f in os.listdir(directory)}


def test_labels_come_from_pseudo_labels_unless_oracle(oracle_run, tmp_path, monkeypatch):
  config, workdir, _, _ = oracle_run
  seen = []

  class Stop(Exception):
    pass

  def spy(dataset, cfg, *, label_dir, **kwargs):
    seen.append(label_dir)
    raise Stop
  monkeypatch.setattr(input_pipeline, 'seg_train_iterator', spy)
  pseudo_workdir = str(tmp_path)
  config = config.copy_and_resolve_references()
  config.seg.oracle = False
  with pytest.raises(UserError, match='pseudo_labels'):
    train_seg.run(config, pseudo_workdir)
  os.makedirs(os.path.join(pseudo_workdir, 'pseudo_labels'))
  with pytest.raises(Stop):
    train_seg.run(config, pseudo_workdir)
  config.seg.oracle = True
  with pytest.raises(Stop):
    train_seg.run(config, pseudo_workdir)
  assert seen == [os.path.join(pseudo_workdir, 'pseudo_labels'), None]


def test_pseudo_labels_that_label_almost_nothing_stop_train_seg(oracle_run, tmp_path,
                                                                monkeypatch):
  config, _, _, _ = oracle_run
  config = config.copy_and_resolve_references()
  config.seg.oracle = False
  monkeypatch.setattr(input_pipeline, 'seg_train_iterator', _no_training)
  dataset = datasets.load_split(config, config.data.train_split)
  for ex in dataset.examples:  # 1 labelled pixel in 48 x 48: 0.04 %
    label = np.full(palette.read_label_png(ex.mask_path).shape, 255, np.uint8)
    label[0, 0] = 0
    palette.save_label_png(os.path.join(tmp_path, 'pseudo_labels', ex.name + '.png'), label)
  with pytest.raises(UserError, match=r'only 0\.04\d\d% of the pseudo-label pixels .*'
                                      r'seg\.min_labelled_fraction=0\.01.*cams\.bg_threshold'):
    train_seg.run(config, str(tmp_path))
  config.seg.min_labelled_fraction = 0.0
  with pytest.raises(AssertionError, match='would train'):
    train_seg.run(config, str(tmp_path))


def _no_training(*args, **kwargs):
  raise AssertionError('would train')


def test_crf_reports_both_and_the_implementations_agree(oracle_run):
  """seg.crf with the reference (worker pool), then with JAX: the same mIoU without CRF as the
  plain run, and CRF labels that agree (>= 98% of the pixels). (A batch of 2 does not split over
  the 4 simulated devices; tests/test_crf.py tests the split.)"""
  pytest.importorskip('pydensecrf.densecrf')
  config, workdir, _, plain = oracle_run
  config = config.copy_and_resolve_references()
  config.seg.crf = True
  config.seg.eval_batch_size = 2
  directory = os.path.join(workdir, 'seg_oracle_predictions')
  names = [ex.name for ex in datasets.load_split(config, 'val').examples]
  read = lambda: [palette.read_label_png(os.path.join(directory, n + '.png')) for n in names]
  report = os.path.join(workdir, common.run_names(True).iou_table)
  runs, reports = {}, {}
  for impl in ('auto', 'reference', 'jax'):
    config.crf.impl = impl
    shutil.rmtree(directory)
    runs[impl] = eval_seg.run(config, workdir), read()
    with open(report, encoding='utf-8') as f:
      reports[impl] = f.read()
  # 'auto' on a CPU where pydensecrf2 imports is the reference, to the pixel, and says so.
  auto, auto_labels = runs.pop('auto')
  assert all(np.array_equal(a, b) for a, b in zip(auto_labels, runs['reference'][1]))
  np.testing.assert_equal(auto, runs['reference'][0])  # NaN for classes absent from val
  assert "dense CRF (reference; crf.impl='auto' on a CPU)" in reports['auto']
  assert 'dense CRF (reference);' in reports['reference']
  assert 'dense CRF (jax);' in reports['jax']
  for out, _ in runs.values():
    assert out['eval_seg_oracle/miou_no_crf'] == pytest.approx(plain['eval_seg_oracle/miou'],
                                                               abs=1e-9)
  (ref, ref_labels), (jx, jx_labels) = runs['reference'], runs['jax']
  equal = sum(np.sum(a == b) for a, b in zip(ref_labels, jx_labels))
  assert equal >= 0.98 * sum(a.size for a in ref_labels)
  assert abs(ref['eval_seg_oracle/miou'] - jx['eval_seg_oracle/miou']) < 0.01
  # Resumed:
  assert eval_seg.run(config, workdir)['eval_seg_oracle/miou'] == jx['eval_seg_oracle/miou']
  config.seg.crf = False  # back to the plain predictions for the other tests
  shutil.rmtree(directory)
  assert eval_seg.run(config, workdir)['eval_seg_oracle/miou'] == plain['eval_seg_oracle/miou']


def test_train_resumes_from_the_latest_checkpoint(oracle_run, capsys):
  config, workdir, _, _ = oracle_run
  config = config.copy_and_resolve_references()
  config.seg.num_steps = 4
  result = train_seg.run(config, workdir)
  assert 'resuming from step 3' in capsys.readouterr().out
  assert np.isfinite(result['train_seg_oracle/final_loss'])
  assert os.path.isdir(os.path.join(workdir, 'seg_oracle_checkpoints', '4'))
