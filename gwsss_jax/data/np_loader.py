"""The NumPy loader (`data.loader='numpy'`): `input_pipeline`'s batches without TensorFlow.

For machines that have JAX but no TensorFlow (a GPU box whose CUDA stack TensorFlow would not
share, a minimal container). It applies the transforms of the tf.data loader (`tf_loader`) with
the same arithmetic where it matters:
- decoding with PIL (JPEGs with libjpeg's accurate integer DCT, as `tf_loader` asks of
  TensorFlow);
- resizing with `tf.image.resize`'s filter: a triangle kernel with half-pixel centres, widened
  by the shrink factor when antialiased (the classifier's images), plain bilinear for DeepLab's
  scale augmentation, and its half-pixel nearest neighbour for labels;
- colour jitter in the order and with the formulas of `tf.image` (grayscale weights, HSV hue,
  the latter through OpenCV).
Its random draws come from NumPy generators seeded with (config.seed, epoch, group row, node)
or (config.seed, stream position), so its crops differ from the tf.data loader's, and the
batches are the same for a given configuration on every run and on resume.

Images are loaded in a pool of `data.num_threads` threads (0: one per core; PIL and NumPy
release the GIL in the heavy parts), `data.prefetch` batches ahead of the consumer, always in
order (`data.deterministic` has no effect here).
"""

import collections
import concurrent.futures
import functools
import os

import cv2
import numpy as np

from gwsss_jax.common.errors import UserError
from gwsss_jax.data import core
from gwsss_jax.data import input_pipeline as ip
from gwsss_jax.data import normalization as norm_lib
from gwsss_jax.data import palette

# tf.image.rgb_to_grayscale's weights.
_GRAY = np.array([0.2989, 0.5870, 0.1140], np.float32)


# PIL, not cv2.imread, which turns JPEGs by their EXIF orientation where TensorFlow does not.
decode = core.read_rgb


@functools.lru_cache(maxsize=512)
def _resize_matrix(n_in: int, n_out: int, antialias: bool) -> np.ndarray:
  """[n_out, n_in] weights of `tf.image.resize`'s bilinear (triangle) filter along one axis."""
  scale = n_out / n_in
  kernel_scale = max(1.0, 1.0 / scale) if antialias else 1.0
  centres = (np.arange(n_out, dtype=np.float64) + 0.5) / scale  # in input pixel units
  pos = np.arange(n_in, dtype=np.float64) + 0.5
  w = np.maximum(0.0, 1.0 - np.abs(pos[None, :] - centres[:, None]) / kernel_scale)
  total = w.sum(1, keepdims=True)
  w = np.where(total > 0, w / np.maximum(total, 1e-30), 0.0)
  return w.astype(np.float32)


def resize_bilinear(x: np.ndarray, hw, antialias: bool) -> np.ndarray:
  """float32 [H, W, C] -> [h, w, C], as tf.image.resize(x, hw, 'bilinear', antialias)."""
  h, w = int(hw[0]), int(hw[1])
  x = np.asarray(x, np.float32)
  rows = _resize_matrix(x.shape[0], h, antialias)
  cols = _resize_matrix(x.shape[1], w, antialias)
  tmp = (rows @ x.reshape(x.shape[0], -1)).reshape(h, x.shape[1], x.shape[2])
  return np.matmul(cols, tmp)  # [w, W] @ [h, W, C] -> [h, w, C]


def resize_nearest(y: np.ndarray, hw) -> np.ndarray:
  """[H, W] -> [h, w] as tf.image.resize(..., 'nearest') (half-pixel centres, rounded down)."""
  h, w = int(hw[0]), int(hw[1])

  def src(n_in, n_out):
    scale = np.float32(n_in) / np.float32(n_out)
    i = np.floor((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale)
    return np.minimum(i.astype(np.int64), n_in - 1)
  return y[src(y.shape[0], h)[:, None], src(y.shape[1], w)[None, :]]


def adjust_hue(x: np.ndarray, delta: float) -> np.ndarray:
  """tf.image.adjust_hue on float RGB in 0..1: the hue turned by `delta` of a full circle.

  OpenCV's float HSV conversions (hue in degrees) are the same formulas as TensorFlow's kernel
  and about ten times faster than NumPy's element-wise version of them."""
  hsv = cv2.cvtColor(np.ascontiguousarray(x, np.float32), cv2.COLOR_RGB2HSV)
  h = np.fmod(hsv[..., 0] * np.float32(1.0 / 360.0) + np.float32(delta), np.float32(1.0))
  hsv[..., 0] = np.where(h < 0, h + 1, h) * np.float32(360.0)
  return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def color_jitter(x: np.ndarray, jitter, u: np.ndarray) -> np.ndarray:
  """`tf_loader._color_jitter` on 0..1 RGB: brightness, contrast, saturation (factors from
  [1 - j, 1 + j]), hue (a shift from [-j, j]); `u` holds four uniform draws in [0, 1)."""
  b, c, s, h = (float(v) for v in jitter)

  def factor(j, ui):
    lo = max(0.0, 1 - j)
    return np.float32(lo + (1 + j - lo) * ui)
  if b > 0:
    x = np.clip(x * factor(b, u[0]), 0.0, 1.0)
  if c > 0:
    mean = np.float32((x @ _GRAY).mean())
    x = np.clip((x - mean) * factor(c, u[1]) + mean, 0.0, 1.0)
  if s > 0:
    gray = (x @ _GRAY)[..., None]
    x = np.clip((x - gray) * factor(s, u[2]) + gray, 0.0, 1.0)
  if h > 0:
    x = np.clip(adjust_hue(x, np.float32(-h + 2 * h * u[3])), 0.0, 1.0)
  return x.astype(np.float32)


def _shorter_side_hw(hw, side: int, at_least: int):
  """The size with the shorter side at `side` (rounded half to even, in float32 as tf_loader
  computes it), each side at least `at_least`."""
  hw = np.asarray(hw, np.float32)
  new = np.round(hw * np.float32(side) / hw.min()).astype(np.int64)
  return np.maximum(new, at_least)


def train_image(path, rng, config, normalization):
  """`tf_loader._train_image` with draws from `rng`: (image [S, S, 3], box, flip)."""
  d = config.data
  crop = ip.input_size(config)
  u = rng.random(4)
  image = decode(path)
  if d.resize_mode == 'square':
    new_hw = np.array([d.resize, d.resize])
  else:
    new_hw = _shorter_side_hw(image.shape[:2], max(d.resize, crop), crop)
  x = np.clip(resize_bilinear(image.astype(np.float32) / 255.0, new_hw, antialias=True), 0.0, 1.0)
  x = color_jitter(x, d.color_jitter, u)
  top = left = 0
  if d.crop_size:
    top = int(rng.integers(0, new_hw[0] - crop + 1))
    left = int(rng.integers(0, new_hw[1] - crop + 1))
  x = x[top:top + crop, left:left + crop]
  flip = bool(d.flip) and rng.random() < 0.5
  if flip:
    x = x[:, ::-1]
  box = np.array([top / new_hw[0], left / new_hw[1], (top + crop) / new_hw[0],
                  (left + crop) / new_hw[1]], np.float32)
  return norm_lib.normalize(x * np.float32(255.0), normalization), box, flip


def _num_threads(config) -> int:
  return int(config.data.num_threads) or os.cpu_count() or 1


def _batches(load, items, batch: int, config, drop_remainder: bool):
  """Stacked batches of `load(item)` dicts over `items`, loaded in a thread pool, in order."""
  ahead = batch * (max(int(config.data.prefetch), 0) + 1)
  pool = concurrent.futures.ThreadPoolExecutor(_num_threads(config),
                                               thread_name_prefix='np_loader')
  pending = collections.deque()
  items = iter(items)
  exhausted = False
  try:
    while True:
      while not exhausted and len(pending) < ahead:
        try:
          pending.append(pool.submit(load, next(items)))
        except StopIteration:
          exhausted = True
      if not pending or (len(pending) < batch and drop_remainder):
        return
      done = [pending.popleft().result() for _ in range(min(batch, len(pending)))]
      yield {k: np.stack([d[k] for d in done]) for k in done[0]}
  finally:
    pool.shutdown(wait=False, cancel_futures=True)


def train_batches(dataset, config, items, *, batch: int, epoch: int, normalization):
  """`input_pipeline.train_iterator`'s batches of the rows `items` (its dict of arrays)."""
  paths = [ex.image_path for ex in dataset.examples]
  num_nodes = items['index'].shape[1]
  seed = int(config.seed)

  def load(r):
    group = int(items['group'][r])
    out = [train_image(paths[int(items['index'][r, k])],
                       np.random.default_rng([seed, epoch, group, k]), config, normalization)
           for k in range(num_nodes)]
    images, boxes, flips = zip(*out)
    return {'images': np.stack(images).astype(np.float32), 'labels': items['labels'][r],
            'adjacency': items['adjacency'][r], 'index': items['index'][r],
            'boxes': np.stack(boxes), 'flips': np.array(flips, bool),
            'round': items['round'][r]}
  return _batches(load, range(len(items['group'])), batch, config, drop_remainder=True)


def _read_label(path: str, image_path: str, hw, what: str) -> np.ndarray:
  """The label PNG at `path`, which must be `hw` (its image's size): else a UserError naming
  both files."""
  label = palette.read_label_png(path)
  if label.shape != tuple(hw):
    raise UserError(f'{path}: {what} {label.shape[1]}x{label.shape[0]} differs from its image '
                    f'{image_path} ({hw[1]}x{hw[0]})')
  return label


def eval_batches(dataset, config, index, *, batch: int, pad_to, normalization, with_masks,
                 with_rgb, resize: int, square: bool):
  """`input_pipeline.eval_iterator`'s batches of the slots `index` (-1: padding)."""
  hp, wp = pad_to
  examples = dataset.examples

  def load(i):
    i = int(i)
    ex = examples[max(i, 0)]
    decoded = decode(ex.image_path)
    image = decoded.astype(np.float32)
    if resize:
      new_hw = (np.array([resize, resize]) if square
                else _shorter_side_hw(image.shape[:2], resize, resize))
      image = np.clip(resize_bilinear(image / 255.0, new_hw, antialias=True), 0.0, 1.0)
      top, left = (new_hw[0] - resize) // 2, (new_hw[1] - resize) // 2
      image = image[top:top + resize, left:left + resize] * np.float32(255.0)
    h, w = image.shape[:2]
    x = np.zeros((hp, wp, 3), np.float32)
    mask = np.full((hp, wp), palette.IGNORE, np.uint8)
    if i >= 0:
      x[:h, :w] = norm_lib.normalize(image, normalization)
      if with_masks and ex.mask_path:
        mask[:h, :w] = _read_label(ex.mask_path, ex.image_path, (h, w), 'mask')
    out = {'images': x, 'masks': mask, 'hw': np.array([h, w], np.int32),
           'index': np.int32(i), 'valid': np.bool_(i >= 0)}
    if with_rgb:
      rgb = np.zeros((hp, wp, 3), np.uint8)
      rgb[:h, :w] = decoded
      out['rgb'] = rgb
    return out
  return _batches(load, index, batch, config, drop_remainder=False)


def seg_batches(dataset, config, label_paths, positions, *, batch: int, normalization):
  """`input_pipeline.seg_train_iterator`'s batches of the (example, stream position) pairs
  `positions` yields."""
  crop = config.seg.crop_size
  lo, hi = (float(v) for v in config.seg.scale_range)
  paths = [ex.image_path for ex in dataset.examples]
  seed = int(config.seed)

  def load(item):
    i, p = (int(v) for v in item)
    rng = np.random.default_rng([seed, 0x5e9, p])
    image = decode(paths[i]).astype(np.float32)
    label = _read_label(label_paths[i], paths[i], image.shape[:2], 'label')
    hw = np.asarray(image.shape[:2], np.float32)
    new_hw = np.maximum(np.round(hw * np.float32(lo + (hi - lo) * rng.random())), 1)
    new_hw = new_hw.astype(np.int64)
    x = norm_lib.normalize(resize_bilinear(image, new_hw, antialias=False), normalization)
    y = resize_nearest(label, new_hw)
    ph, pw = max(crop - new_hw[0], 0), max(crop - new_hw[1], 0)
    x = np.pad(x, [(0, ph), (0, pw), (0, 0)])
    y = np.pad(y, [(0, ph), (0, pw)], constant_values=palette.IGNORE)
    top = int(rng.integers(0, x.shape[0] - crop + 1))
    left = int(rng.integers(0, x.shape[1] - crop + 1))
    x = x[top:top + crop, left:left + crop]
    y = y[top:top + crop, left:left + crop]
    if rng.random() < 0.5:
      x, y = x[:, ::-1], y[:, ::-1]
    return {'images': np.ascontiguousarray(x, np.float32),
            'labels': np.ascontiguousarray(y, np.int32)}
  return _batches(load, positions, batch, config, drop_remainder=True)
