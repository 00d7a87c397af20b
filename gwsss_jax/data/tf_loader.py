"""The tf.data loader (`data.loader='tf'`): groups for the classifier, padded evaluation
batches, DeepLab crops. Callers go through `input_pipeline`, which picks this module or
`np_loader` and holds what the two share (the groups of an epoch, the sharding of rows).

Every random choice is a stateless op seeded from (config.seed, epoch or position, index).
TensorFlow is kept off the accelerators (JAX owns them): this module hides GPUs and TPUs from
TensorFlow at import.
"""

import tensorflow as tf

from gwsss_jax.data import normalization as norm_lib
from gwsss_jax.data import palette
from gwsss_jax.data import input_pipeline as ip

for _kind in ('GPU', 'TPU'):
  try:
    tf.config.set_visible_devices([], _kind)
  except (RuntimeError, ValueError):  # Already initialised, or no such device type.
    pass

_AUTOTUNE = tf.data.AUTOTUNE

def _normalize_tf(x, normalization):
  """float32 RGB 0..255 -> normalised (`normalization.normalize` in TensorFlow)."""
  bgr, mean, std = norm_lib.constants(normalization)
  if bgr:
    x = x[..., ::-1]
  return (x - tf.constant(mean)) / tf.constant(std)


def _options(config) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = bool(config.data.deterministic)
  options.experimental_optimization.map_parallelization = True
  return options


def _decode(path):
  """uint8 RGB [H, W, 3] of a JPEG, PNG or BMP (MSRC); JPEGs decoded with the accurate integer
  DCT, as PIL (and so the PyTorch pipelines) decode them, rather than TensorFlow's faster default."""
  data = tf.io.read_file(path)
  image = tf.cond(
      tf.io.is_jpeg(data),
      lambda: tf.io.decode_jpeg(data, channels=3, dct_method='INTEGER_ACCURATE'),
      lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
  return tf.ensure_shape(image, [None, None, 3])


def _read_label(path):
  """Class indices of a palette PNG (TensorFlow would decode its colours), uint8 [H, W]."""
  label = tf.numpy_function(lambda p: palette.read_label_png(p.decode()), [path], tf.uint8)
  return tf.ensure_shape(label, [None, None])


def _seeds(seed, n):
  return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def _uniform(seed, lo, hi):
  return tf.random.stateless_uniform([], seed, lo, hi, dtype=tf.float32)


def _color_jitter(x, jitter, seed):
  """torchvision-style ColorJitter on 0..1 RGB, in a fixed order: brightness, contrast,
  saturation (factors drawn from [1 - j, 1 + j]), hue (shift drawn from [-j, j])."""
  b, c, s, h = (float(v) for v in jitter)
  sb, sc, ss, sh = _seeds(seed, 4)
  if b > 0:
    x = tf.clip_by_value(x * _uniform(sb, max(0.0, 1 - b), 1 + b), 0.0, 1.0)
  if c > 0:
    mean = tf.reduce_mean(tf.image.rgb_to_grayscale(x))
    x = tf.clip_by_value((x - mean) * _uniform(sc, max(0.0, 1 - c), 1 + c) + mean, 0.0, 1.0)
  if s > 0:
    gray = tf.image.rgb_to_grayscale(x)
    x = tf.clip_by_value((x - gray) * _uniform(ss, max(0.0, 1 - s), 1 + s) + gray, 0.0, 1.0)
  if h > 0:
    x = tf.clip_by_value(tf.image.adjust_hue(x, _uniform(sh, -h, h)), 0.0, 1.0)
  return x


def _random_crop_offsets(height, width, size, seed):
  s1, s2 = _seeds(seed, 2)
  top = tf.random.stateless_uniform([], s1, 0, height - size + 1, dtype=tf.int32)
  left = tf.random.stateless_uniform([], s2, 0, width - size + 1, dtype=tf.int32)
  return top, left


def _train_image(path, seed, config, normalization):
  """Resize (`data.resize_mode`), colour jitter, random crop (none when `data.crop_size` is 0),
  random flip (`data.flip`), normalise.

  Returns the image [S, S, 3] float32 (S = `input_size`), the crop box (y0, x0, y1, x1) as
  fractions of the whole image, and whether it was mirrored: OAA maps each crop's CAM back into
  the whole image (without a crop the box is the whole image, and that is a plain resize).
  """
  d = config.data
  crop = ip.input_size(config)
  s_jit, s_crop, s_flip = _seeds(seed, 3)
  image = _decode(path)
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  if d.resize_mode == 'square':
    new_hw = tf.constant([d.resize, d.resize], tf.int32)
  else:
    resize = max(d.resize, crop)
    new_hw = tf.cast(tf.round(hw * resize / tf.reduce_min(hw)), tf.int32)
    new_hw = tf.maximum(new_hw, crop)
  x = tf.image.resize(tf.cast(image, tf.float32) / 255.0, new_hw, 'bilinear', antialias=True)
  x = _color_jitter(tf.clip_by_value(x, 0.0, 1.0), d.color_jitter, s_jit)
  if d.crop_size:
    top, left = _random_crop_offsets(new_hw[0], new_hw[1], crop, s_crop)
  else:
    top, left = tf.constant(0), tf.constant(0)
  x = x[top:top + crop, left:left + crop]
  flip = tf.constant(False)
  if d.flip:
    flip = _uniform(s_flip, 0.0, 1.0) < 0.5
    x = tf.where(flip, x[:, ::-1], x)
  x = tf.ensure_shape(x, [crop, crop, 3])
  new_hw = tf.cast(new_hw, tf.float32)
  box = tf.stack([tf.cast(top, tf.float32) / new_hw[0], tf.cast(left, tf.float32) / new_hw[1],
                  tf.cast(top + crop, tf.float32) / new_hw[0],
                  tf.cast(left + crop, tf.float32) / new_hw[1]])
  return _normalize_tf(x * 255.0, normalization), box, flip


def train_batches(dataset, config, items, *, batch: int, epoch: int, normalization):
  """`input_pipeline.train_iterator`'s batches of the rows `items` (its dict of arrays)."""
  b = batch
  paths = tf.constant([ex.image_path for ex in dataset.examples])
  base_seed = tf.constant([config.seed, epoch], tf.int64)
  num_nodes = items['index'].shape[1]

  # One traced function for the K images of a group (tracing is the slow part of set-up).
  one_image = tf.function(lambda path, seed: _train_image(path, seed, config, normalization))

  def load(item):
    seed = tf.random.experimental.stateless_fold_in(base_seed, item['group'])
    images, boxes, flips = zip(*[
        one_image(paths[item['index'][k]], tf.random.experimental.stateless_fold_in(seed, k))
        for k in range(num_nodes)])
    return {'images': tf.stack(images), 'labels': item['labels'],
            'adjacency': item['adjacency'], 'index': item['index'],
            'boxes': tf.stack(boxes), 'flips': tf.stack(flips), 'round': item['round']}

  ds = tf.data.Dataset.from_tensor_slices(items)
  ds = ds.map(load, num_parallel_calls=_AUTOTUNE, deterministic=config.data.deterministic)
  ds = ds.batch(b, drop_remainder=True).prefetch(config.data.prefetch)
  return ds.with_options(_options(config)).as_numpy_iterator()


def eval_batches(dataset, config, index, *, batch: int, pad_to, normalization, with_masks,
                 with_rgb, resize, square):
  """`input_pipeline.eval_iterator`'s batches of the slots `index` (-1: padding)."""
  batch_size = batch
  paths = tf.constant([ex.image_path for ex in dataset.examples] or [''])
  mask_paths = tf.constant([ex.mask_path or '' for ex in dataset.examples] or [''])
  hp, wp = pad_to

  def load(i):
    valid = i >= 0
    j = tf.maximum(i, 0)
    decoded = _decode(paths[j])
    image = tf.cast(decoded, tf.float32)
    if resize:
      hw = tf.cast(tf.shape(image)[:2], tf.float32)
      new_hw = tf.maximum(tf.cast(tf.round(hw * resize / tf.reduce_min(hw)), tf.int32), resize)
      if square:
        new_hw = tf.constant([resize, resize], tf.int32)
      image = tf.image.resize(image / 255.0, new_hw, 'bilinear', antialias=True)
      image = tf.image.resize_with_crop_or_pad(tf.clip_by_value(image, 0.0, 1.0) * 255.0,
                                               resize, resize)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    x = _normalize_tf(image, normalization)
    x = tf.image.pad_to_bounding_box(x, 0, 0, hp, wp) * tf.cast(valid, tf.float32)
    if with_masks:
      mask = tf.cond(tf.strings.length(mask_paths[j]) > 0,
                     lambda: _read_label(mask_paths[j]),
                     lambda: tf.fill([h, w], tf.constant(palette.IGNORE, tf.uint8)))
      mask = tf.where(valid, mask, tf.constant(palette.IGNORE, tf.uint8))
    else:
      mask = tf.fill([h, w], tf.constant(palette.IGNORE, tf.uint8))
    mask = tf.pad(mask, [[0, hp - h], [0, wp - w]], constant_values=palette.IGNORE)
    out = {'images': tf.ensure_shape(x, [hp, wp, 3]), 'masks': tf.ensure_shape(mask, [hp, wp]),
           'hw': tf.stack([h, w]), 'index': i, 'valid': valid}
    if with_rgb:
      out['rgb'] = tf.ensure_shape(tf.image.pad_to_bounding_box(decoded, 0, 0, hp, wp),
                                   [hp, wp, 3])
    return out

  ds = tf.data.Dataset.from_tensor_slices(index)
  ds = ds.map(load, num_parallel_calls=_AUTOTUNE, deterministic=True)
  ds = ds.batch(batch_size).prefetch(config.data.prefetch)
  return ds.with_options(_options(config)).as_numpy_iterator()


def seg_batches(dataset, config, label_paths, positions, *, batch: int, normalization):
  """`input_pipeline.seg_train_iterator`'s batches of the (example, stream position) pairs
  `positions` yields."""
  b = batch
  crop = config.seg.crop_size
  lo, hi = (float(v) for v in config.seg.scale_range)
  paths = tf.constant([ex.image_path for ex in dataset.examples])
  labels = tf.constant(label_paths)
  base_seed = tf.constant([config.seed, 0x5e9], tf.int64)

  def load(i, p):
    s_scale, s_crop, s_flip = _seeds(tf.random.experimental.stateless_fold_in(base_seed, p), 3)
    image = tf.cast(_decode(paths[i]), tf.float32)
    label = _read_label(labels[i])[..., None]
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    new_hw = tf.maximum(tf.cast(tf.round(hw * _uniform(s_scale, lo, hi)), tf.int32), 1)
    x = _normalize_tf(tf.image.resize(image, new_hw, 'bilinear'), normalization)
    y = tf.image.resize(label, new_hw, 'nearest')
    ph = tf.maximum(crop - new_hw[0], 0)
    pw = tf.maximum(crop - new_hw[1], 0)
    x = tf.pad(x, [[0, ph], [0, pw], [0, 0]])
    y = tf.pad(y, [[0, ph], [0, pw], [0, 0]], constant_values=palette.IGNORE)
    top, left = _random_crop_offsets(new_hw[0] + ph, new_hw[1] + pw, crop, s_crop)
    x = x[top:top + crop, left:left + crop]
    y = y[top:top + crop, left:left + crop, 0]
    flip = _uniform(s_flip, 0.0, 1.0) < 0.5
    x = tf.where(flip, x[:, ::-1], x)
    y = tf.where(flip, y[:, ::-1], y)
    return {'images': tf.ensure_shape(x, [crop, crop, 3]),
            'labels': tf.ensure_shape(tf.cast(y, tf.int32), [crop, crop])}

  ds = tf.data.Dataset.from_generator(
      lambda: positions,
      output_signature=(tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int64)))
  ds = ds.map(load, num_parallel_calls=_AUTOTUNE, deterministic=config.data.deterministic)
  ds = ds.batch(b, drop_remainder=True).prefetch(config.data.prefetch)
  return ds.with_options(_options(config)).as_numpy_iterator()
