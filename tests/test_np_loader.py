"""The NumPy loader against TensorFlow's own ops and the tf.data loader.

tests/test_input_pipeline.py runs the iterators' properties with both loaders; these tests
check that the NumPy loader's arithmetic is TensorFlow's: the resize filters against
tf.image.resize, the colour jitter against tf_loader's with the same random factors, whole
evaluation batches (which draw nothing) against the tf.data loader's, and training crops
against windows of TensorFlow's resize of the same image.
"""

import dataclasses
import os

import numpy as np
from PIL import Image
import pytest

from gwsss_jax import config as config_lib
from gwsss_jax.common.errors import UserError
from gwsss_jax.data import input_pipeline as ip
from gwsss_jax.data import normalization as norm_lib
from gwsss_jax.data import np_loader
from gwsss_jax.data import palette
import test_input_pipeline
import test_voc

tf = pytest.importorskip('tensorflow')
from gwsss_jax.data import tf_loader  # pylint: disable=g-import-not-at-top,g-bad-import-order


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('voc'))
  test_voc.write_voc(root, num_images=12, size=(37, 45))  # 37 x 45: every resize resamples
  return test_input_pipeline.small_setup(root, seed=5)


def _with(config, **keys):
  config = config.copy_and_resolve_references()
  for key, value in keys.items():
    section, name = key.split('__')
    config[section][name] = value
  return config


@pytest.mark.parametrize('src,dst', [((37, 45), (28, 34)), ((37, 45), (13, 90)),
                                     ((20, 30), (47, 61)), ((64, 48), (21, 16))])
@pytest.mark.parametrize('antialias', [True, False])
def test_resize_is_tensorflows(src, dst, antialias):
  x = np.random.default_rng(0).random(src + (3,), np.float32)
  want = tf.image.resize(x, dst, 'bilinear', antialias=antialias).numpy()
  got = np_loader.resize_bilinear(x, dst, antialias=antialias)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=1e-5)  # float32 sums in another order


@pytest.mark.parametrize('src,dst', [((37, 45), (28, 34)), ((20, 30), (47, 61)),
                                     ((9, 7), (9, 7)), ((50, 41), (17, 100))])
def test_nearest_is_tensorflows(src, dst):
  y = np.random.default_rng(1).integers(0, 255, src).astype(np.uint8)
  want = tf.image.resize(y[..., None], dst, 'nearest').numpy()[..., 0]
  np.testing.assert_array_equal(np_loader.resize_nearest(y, dst), want.astype(np.uint8))


def test_hue_is_tensorflows():
  rng = np.random.default_rng(2)
  x = rng.random((31, 17, 3), np.float32)
  x[0, :3] = [[0.5, 0.5, 0.5], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]  # grey, black, a pure hue
  for delta in (-0.1, -0.03, 0.0, 0.07, 0.1, 0.45):
    want = tf.image.adjust_hue(x, delta).numpy()
    np.testing.assert_allclose(np_loader.adjust_hue(x, delta), want, atol=2e-6)


@pytest.mark.parametrize('jitter', [(0.3, 0.3, 0.3, 0.1), (0.8, 0.0, 0.5, 0.0),
                                    (0.0, 1.5, 0.0, 0.3)])
def test_color_jitter_is_tf_loaders_with_its_factors(jitter):
  """tf_loader draws its four factors from stateless seeds; the same factors, handed to the
  NumPy jitter as uniform draws, give the same image."""
  x = np.random.default_rng(3).random((20, 26, 3), np.float32)
  for s in range(4):
    seed = tf.constant([s, 11], tf.int64)
    want = tf_loader._color_jitter(tf.constant(x), jitter, seed).numpy()
    u = np.zeros(4)
    for k, (j, sk) in enumerate(zip(jitter, tf_loader._seeds(seed, 4))):
      if j > 0:
        lo, hi = ((max(0.0, 1 - j), 1 + j) if k < 3 else (-j, j))
        u[k] = (float(tf_loader._uniform(sk, lo, hi)) - lo) / (hi - lo)
    np.testing.assert_allclose(np_loader.color_jitter(x, jitter, u), want, atol=3e-5)


@pytest.mark.parametrize('kw', [
    dict(with_masks=True), dict(with_masks=True, with_rgb=True, pad_to=(40, 50)),
    dict(with_masks=False, resize=28), dict(with_masks=False, resize=30, square=True)])
def test_eval_batches_equal_the_tf_loaders(setup, kw):
  config, _, val = setup
  spec = {'name': 'caffe_bgr', 'channel_order': 'bgr', 'mean': (100.0, 110.0, 120.0),
          'std': (2.0, 2.0, 2.0)}
  batches = {}
  for loader in config_lib.LOADERS:
    batches[loader] = list(ip.eval_iterator(val, _with(config, data__loader=loader),
                                            batch_size=4, normalization=spec, process_index=0,
                                            process_count=1, **kw))
  assert len(batches['tf']) == len(batches['numpy']) >= 1
  for a, b in zip(batches['tf'], batches['numpy']):
    assert sorted(a) == sorted(b)
    for key in a:
      assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
      np.testing.assert_allclose(b[key], a[key], atol=2e-4, err_msg=key)


def _windows(ref, crop):
  """All crop x crop windows of `ref` [H, W, C] and their mirror images."""
  for t in range(ref.shape[0] - crop + 1):
    for l in range(ref.shape[1] - crop + 1):
      w = ref[t:t + crop, l:l + crop]
      yield (t, l, False), w
      yield (t, l, True), w[:, ::-1]


def test_train_crops_are_windows_of_tensorflows_resize(setup):
  config, train, _ = setup
  config = _with(config, data__loader='numpy', data__color_jitter=(0.0, 0.0, 0.0, 0.0))
  b = next(ip.train_iterator(train, config, num_nodes=2, global_batch=4, epoch=1,
                             normalization='caffe_bgr', process_index=0, process_count=1))
  for img, i, box, flip in zip(b['images'].reshape(-1, 24, 24, 3), b['index'].reshape(-1),
                               b['boxes'].reshape(-1, 4), b['flips'].reshape(-1)):
    pixels = np.asarray(Image.open(train.examples[i].image_path).convert('RGB'), np.float32)
    new_hw = (28, 34)  # 37 x 45 with the shorter side at 28
    ref = np.clip(tf.image.resize(pixels / 255.0, new_hw, 'bilinear', antialias=True).numpy(),
                  0.0, 1.0) * 255.0
    ref = norm_lib.normalize(ref, 'caffe_bgr')
    top, left = int(round(box[0] * new_hw[0])), int(round(box[1] * new_hw[1]))
    want = ref[top:top + 24, left:left + 24]
    np.testing.assert_allclose(img[:, ::-1] if flip else img, want, atol=2e-3)


def test_seg_crops_are_windows_of_tensorflows_resize(setup):
  config, train, _ = setup
  config = _with(config, data__loader='numpy', seg__scale_range=(1.3, 1.3))
  it = ip.seg_train_iterator(train, config, global_batch=4, normalization='imagenet_rgb',
                             process_index=0, process_count=1)
  b = next(it)
  new_hw = (48, 58)  # round(37 * 1.3), round(45 * 1.3)
  refs = []
  for ex in train.examples:
    pixels = np.asarray(Image.open(ex.image_path).convert('RGB'), np.float32)
    x = norm_lib.normalize(tf.image.resize(pixels, new_hw, 'bilinear').numpy(), 'imagenet_rgb')
    y = tf.image.resize(palette.read_label_png(ex.mask_path)[..., None], new_hw,
                        'nearest').numpy()[..., 0]
    refs.append(np.concatenate([x, y[..., None].astype(np.float32)], -1))
  for img, lab in zip(b['images'], b['labels']):
    got = np.concatenate([img, lab[..., None].astype(np.float32)], -1)
    best = min(np.abs(w - got).max() for ref in refs for _, w in _windows(ref, 40))
    assert best < 2e-3, best


def _first_example_with(dataset, **changes):
  """A copy of `dataset` whose first example has `changes` (the others are the same)."""
  first = dataclasses.replace(dataset.examples[0], **changes)
  return dataclasses.replace(dataset, examples=[first] + list(dataset.examples[1:]))


def test_an_unreadable_image_is_named(setup, tmp_path):
  config, train, _ = setup
  config = _with(config, data__loader='numpy')
  bad = str(tmp_path / 'bad.jpg')
  with open(bad, 'wb') as f:
    f.write(b'not an image')
  broken = _first_example_with(train, image_path=bad)
  with pytest.raises(UserError, match=f'unreadable image {bad}'):
    list(ip.eval_iterator(broken, config, batch_size=2, pad_to=(40, 50), process_index=0,
                          process_count=1, with_masks=False))
  assert os.path.getsize(bad) == 12  # read, not touched


def test_a_mask_of_another_size_is_named(setup, tmp_path):
  config, _, val = setup
  config = _with(config, data__loader='numpy')
  small = str(tmp_path / 'small.png')
  palette.save_label_png(small, np.zeros((5, 7), np.uint8))
  broken = _first_example_with(val, mask_path=small)
  with pytest.raises(UserError, match=f'{small}: mask 7x5 differs from its image'):
    list(ip.eval_iterator(broken, config, batch_size=2, process_index=0, process_count=1))


_BLAS_PROBE = '''
import os
from gwsss_jax.common import blas
seen = []
limit = blas.limit_threads
blas.limit_threads = lambda: seen.append(limit()) or seen[-1]
import {module}
print(seen, [os.environ.get(name) for name in blas.VARIABLES])
'''


@pytest.mark.parametrize('module', ['gwsss_jax.main', 'gwsss_jax.bench', 'benchmarks.loaders'])
@pytest.mark.parametrize('user_value', [None, '3'])
def test_entry_points_give_blas_one_thread_before_numpy_loads(module, user_value):
  """The loader's threads call BLAS (its resize is a matrix product), and OpenBLAS or MKL read
  their thread count once, when NumPy loads: every entry point that runs the loader sets it
  to 1 before NumPy is imported (the call returns True only then), and keeps a user's value."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from gwsss_jax.common import blas  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {k: v for k, v in os.environ.items() if k not in blas.VARIABLES}
  if user_value is not None:
    env['OPENBLAS_NUM_THREADS'] = user_value
  proc = subprocess.run([sys.executable, '-c', _BLAS_PROBE.format(module=module)], cwd=root,
                        env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip().splitlines()[-1] == f"[True] ['{user_value or 1}', '1']"
