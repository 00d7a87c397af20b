"""tf.data pipelines: groups for the classifier, padded evaluation batches, DeepLab crops.

Every random choice is a stateless op seeded from (config.seed, epoch or position, index), and
the order of the examples is a numpy function of the same, so an iterator is positioned by
(epoch, start_batch) (or start_step) alone: resuming yields bitwise the batches that an
uninterrupted run would have. Skipping happens on the index list, before any decoding.

Processes read disjoint shards: of each global batch of B rows, process i takes rows
[i*b, (i+1)*b) with b = B / process_count. TensorFlow is kept off the accelerators (JAX owns
them): this module hides GPUs and TPUs from TensorFlow at import.
"""

import os
import time

import numpy as np
import tensorflow as tf

from gwsss_jax import config as config_lib
from gwsss_jax.common.errors import UserError
from gwsss_jax.data import normalization as norm_lib
from gwsss_jax.data import palette
from gwsss_jax.data import sampler
from gwsss_jax.data import core

for _kind in ('GPU', 'TPU'):
  try:
    tf.config.set_visible_devices([], _kind)
  except (RuntimeError, ValueError):  # Already initialised, or no such device type.
    pass

_AUTOTUNE = tf.data.AUTOTUNE

# Every iterator takes `normalization`: a convention name of `data.normalization`
# ('imagenet_rgb', 'caffe_bgr') or the full spec stored with the weights (its mean may differ
# from the named one's, e.g. DeepLab's Caffe mean), applied exactly as given.


def _normalize_tf(x, normalization):
  """float32 RGB 0..255 -> normalised (`normalization.normalize` in TensorFlow)."""
  bgr, mean, std = norm_lib.constants(normalization)
  if bgr:
    x = x[..., ::-1]
  return (x - tf.constant(mean)) / tf.constant(std)


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
  """Full batches of groups per epoch (the remainder is dropped)."""
  return num_examples // global_batch


def _process(process_index, process_count):
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  return process_index, process_count


def _per_process(global_batch: int, process_count: int, key: str) -> int:
  if global_batch < 1 or global_batch % process_count:
    raise UserError(f'config.{key}={global_batch}: must be a positive multiple of the number '
                    f'of processes ({process_count})')
  return global_batch // process_count


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


input_size = config_lib.input_size  # defined with the config: the steps need it without TF


def _train_image(path, seed, config, normalization):
  """Resize (`data.resize_mode`), colour jitter, random crop (none when `data.crop_size` is 0),
  random flip (`data.flip`), normalise.

  Returns the image [S, S, 3] float32 (S = `input_size`), the crop box (y0, x0, y1, x1) as
  fractions of the whole image, and whether it was mirrored: OAA maps each crop's CAM back into
  the whole image (without a crop the box is the whole image, and that is a plain resize).
  """
  d = config.data
  crop = input_size(config)
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


def epoch_groups(dataset, config, *, num_nodes: int, epoch: int):
  """(groups [R*N, K], adjacency [R*N, K, K], order [R*N]): the groups of an epoch and their
  order; R = `train.repeats_per_epoch` rounds of groups, each round drawn afresh
  (`train.anchor_order`: a permutation per epoch, or the list order as the release's loader)."""
  r = config.train.repeats_per_epoch
  rounds = [sampler.make_groups(dataset.label_matrix(), num_nodes, seed=config.seed,
                                epoch=epoch * r + j, rule=config.train.group_rule)
            for j in range(r)]
  groups = np.concatenate([g for g, _ in rounds])
  adjacency = np.concatenate([a for _, a in rounds])
  if config.train.anchor_order == 'list':
    order = np.arange(len(groups))
  else:
    order = np.random.default_rng([config.seed, epoch, 1]).permutation(len(groups))
  return groups, adjacency, order


def train_iterator(dataset, config, *, num_nodes: int, global_batch: int, epoch: int,
                   start_batch: int = 0, normalization='imagenet_rgb',
                   process_index=None, process_count=None):
  """This process's batches of groups for one epoch, from batch `start_batch` on.

  Yields dicts of numpy arrays: 'images' float32 [b, K, C, C, 3], 'labels' float32 [b, K, L],
  'adjacency' float32 [b, K, K], 'index' int32 [b, K] (dataset indices; column 0 the anchor),
  'boxes' float32 [b, K, 4] (each crop's (y0, x0, y1, x1) in 0..1 of its image), 'flips'
  bool [b, K] and 'round' int32 [b] (which of the epoch's `train.repeats_per_epoch` rounds of
  groups the group comes from).
  """
  norm_lib.resolve(normalization)  # a bad spec fails here, naming itself
  pi, pc = _process(process_index, process_count)
  b = _per_process(global_batch, pc, 'train.batch_size')
  groups, adjacency, order = epoch_groups(dataset, config, num_nodes=num_nodes, epoch=epoch)
  steps = steps_per_epoch(len(groups), global_batch)
  rows = order[:steps * global_batch].reshape(steps, pc, b)[start_batch:, pi].reshape(-1)
  labels = dataset.label_matrix().astype(np.float32)
  paths = tf.constant([ex.image_path for ex in dataset.examples])
  base_seed = tf.constant([config.seed, epoch], tf.int64)

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

  ds = tf.data.Dataset.from_tensor_slices({
      'group': rows.astype(np.int64),
      'index': groups[rows].astype(np.int32),
      'labels': labels[groups[rows]],
      'adjacency': adjacency[rows],
      'round': (rows // (len(groups) // config.train.repeats_per_epoch)).astype(np.int32),
  })
  ds = ds.map(load, num_parallel_calls=_AUTOTUNE, deterministic=config.data.deterministic)
  ds = ds.batch(b, drop_remainder=True).prefetch(config.data.prefetch)
  return ds.with_options(_options(config)).as_numpy_iterator()


def image_sizes(dataset) -> np.ndarray:
  """[N, 2] (height, width) of every image, from the file headers."""
  sizes = []
  for ex in dataset.examples:
    wh = core.header_size(ex.image_path)
    if wh is None:
      raise UserError(f'unreadable image {ex.image_path}')
    sizes.append((wh[1], wh[0]))
  return np.asarray(sizes, np.int32).reshape(-1, 2)


def eval_iterator(dataset, config, *, batch_size: int, pad_to=None,
                  normalization='imagenet_rgb', process_index=None, process_count=None,
                  with_masks: bool = True, with_rgb: bool = False, resize: int = 0,
                  square: bool = False):
  """This process's evaluation batches: full-resolution images padded bottom/right.

  `pad_to` (H, W) fixes the padded shape (one compilation); None pads to the largest image of
  the dataset (read from the file headers). The last batch is filled with padding examples
  ('valid' False, 'index' -1), never dropped. `resize` > 0 instead resizes each image's shorter
  side to `resize` and centre-crops it to `resize` x `resize`, or with `square` resizes it to
  that square ('hw' is then the square's size; images only: with_masks and with_rgb False).

  Yields 'images' float32 [b, Hp, Wp, 3] (padding 0, the mean after normalisation), 'masks'
  uint8 [b, Hp, Wp] (255 in the padding, and everywhere when there is no ground truth or
  with_masks is False), 'hw' int32 [b, 2] original sizes, 'index' int32 [b], 'valid' bool [b],
  and with `with_rgb` the images as decoded, 'rgb' uint8 [b, Hp, Wp, 3] (the dense CRF's input).
  """
  norm_lib.resolve(normalization)  # a bad spec fails here, naming itself
  pi, pc = _process(process_index, process_count)
  if resize:
    if with_masks or with_rgb:
      raise ValueError('eval_iterator: resize needs with_masks=False and with_rgb=False')
    largest = pad_to = (resize, resize)
  else:
    sizes = image_sizes(dataset)
    largest = tuple(int(v) for v in sizes.max(0)) if len(sizes) else (1, 1)
  if pad_to is None:
    pad_to = largest
  pad_to = tuple(int(v) for v in pad_to)
  if largest[0] > pad_to[0] or largest[1] > pad_to[1]:
    raise UserError(f'an image of {dataset.split!r} is {largest[0]}x{largest[1]}, larger than '
                    f'the evaluation padding {pad_to[0]}x{pad_to[1]}')
  n = len(dataset)
  per_round = batch_size * pc
  total = -(-n // per_round) * per_round
  index = np.arange(total)
  index = index.reshape(-1, pc, batch_size)[:, pi].reshape(-1)
  index = np.where(index < n, index, -1).astype(np.int32)
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


def _seg_positions(num_examples, seed, global_batch, b, pi, start_step):
  """(example index, stream position) forever: the examples in a fresh permutation per pass."""
  perms = {}
  step = start_step
  while True:
    for p in range(step * global_batch + pi * b, step * global_batch + (pi + 1) * b):
      epoch = p // num_examples
      if epoch not in perms:
        perms = {epoch: np.random.default_rng([seed, epoch, 2]).permutation(num_examples)}
      yield perms[epoch][p % num_examples], p
    step += 1


def seg_train_iterator(dataset, config, *, label_dir=None, global_batch: int, start_step: int = 0,
                       normalization='imagenet_rgb', process_index=None,
                       process_count=None):
  """Endless DeepLab training batches from step `start_step` on.

  Labels are `<label_dir>/<name>.png` (pseudo labels) or, when label_dir is None, the ground
  truth masks. Augmentation: random scale in config.seg.scale_range, padding to the crop size
  (image with the mean, label with 255), random crop config.seg.crop_size, horizontal flip.
  Yields 'images' float32 [b, C, C, 3] and 'labels' int32 [b, C, C].
  """
  norm_lib.resolve(normalization)  # a bad spec fails here, naming itself
  pi, pc = _process(process_index, process_count)
  b = _per_process(global_batch, pc, 'seg.batch_size')
  if label_dir is None:
    label_paths = [ex.mask_path for ex in dataset.examples]
    missing = [ex.name for ex in dataset.examples if ex.mask_path is None]
    if missing:
      raise UserError(f'split {dataset.split!r} has no ground-truth mask for {missing[0]!r} '
                      f'(and {len(missing) - 1} more): cannot train on ground truth')
  else:
    label_paths = [os.path.join(label_dir, ex.name + '.png') for ex in dataset.examples]
    missing = [p for p in label_paths if not os.path.isfile(p)]
    if missing:
      raise UserError(f'pseudo label not found: {missing[0]} (and {len(missing) - 1} more); '
                      'run the pseudo_labels stage first')
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
      lambda: _seg_positions(len(dataset), config.seed, global_batch, b, pi, start_step),
      output_signature=(tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int64)))
  ds = ds.map(load, num_parallel_calls=_AUTOTUNE, deterministic=config.data.deterministic)
  ds = ds.batch(b, drop_remainder=True).prefetch(config.data.prefetch)
  return ds.with_options(_options(config)).as_numpy_iterator()


def benchmark(config, num_batches: int) -> float:
  """Groups per second delivered by `train_iterator` on the configured training split.

  Prints the figure; the first batch (graph construction, group sampling) is not timed.
  """
  from gwsss_jax.data import datasets  # pylint: disable=g-import-not-at-top
  dataset = datasets.load_split(config, config.data.train_split)
  normalization = config.data.normalization
  if normalization == 'auto':
    normalization = 'imagenet_rgb'
  it = train_iterator(dataset, config, num_nodes=config.model.num_nodes,
                      global_batch=config.train.batch_size, epoch=0, normalization=normalization,
                      process_index=0, process_count=1)
  next(it)
  t0 = time.perf_counter()
  done = 0
  for batch in it:
    done += batch['images'].shape[0]
    if done >= num_batches * config.train.batch_size:
      break
  rate = done / max(time.perf_counter() - t0, 1e-9)
  print(f'input pipeline: {rate:.1f} groups/s ({config.model.num_nodes} images of '
        f'{input_size(config)}px each, batch {config.train.batch_size})')
  return rate
