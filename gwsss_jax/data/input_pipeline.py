"""Input pipelines: groups for the classifier, padded evaluation batches, DeepLab crops.

Two loaders make the batches, chosen by `data.loader`: 'tf' (tf.data, `tf_loader`, the
default) and 'numpy' (NumPy, PIL and a thread pool, `np_loader`, for machines without
TensorFlow). This module holds what they share, so that both see the same groups in the same
order and the same shards: the groups of an epoch, the rows of each process, the evaluation
slots, the DeepLab stream positions. Each loader then loads the rows: decoding, resizing and
augmenting them. They apply the same transforms; their random draws come from different
generators, so a given image's crop in a given epoch differs between them.

Every random choice is a pure function of (config.seed, epoch or stream position, index), and
the order of the examples is a numpy function of the same, so an iterator is positioned by
(epoch, start_batch) (or start_step) alone: resuming yields bitwise the batches that an
uninterrupted run would have. Skipping happens on the index list, before any decoding.

Processes read disjoint shards: of each global batch of B rows, process i takes rows
[i*b, (i+1)*b) with b = B / process_count.
"""

import importlib
import importlib.util
import os
import time

import numpy as np

from gwsss_jax import config as config_lib
from gwsss_jax.common.errors import UserError
from gwsss_jax.data import core
from gwsss_jax.data import normalization as norm_lib
from gwsss_jax.data import sampler

LOADERS = config_lib.LOADERS

# Every iterator takes `normalization`: a convention name of `data.normalization`
# ('imagenet_rgb', 'caffe_bgr') or the full spec stored with the weights (its mean may differ
# from the named one's, e.g. DeepLab's Caffe mean), applied exactly as given.

input_size = config_lib.input_size  # defined with the config: the steps need it without TF


def loader_module(config):
  """The module of `config.data.loader`; a clear error where TensorFlow is missing."""
  name = config.data.loader
  if name not in LOADERS:
    raise UserError(f'config.data.loader={name!r}: choose from '
                    f'{", ".join(map(repr, LOADERS))}')
  if name == 'tf' and importlib.util.find_spec('tensorflow') is None:
    raise UserError("config.data.loader='tf' needs TensorFlow, which is not installed: "
                    "pip install -r requirements.txt, or set --config.data.loader=numpy")
  return importlib.import_module(
      'gwsss_jax.data.' + {'tf': 'tf_loader', 'numpy': 'np_loader'}[name])


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


def epoch_groups(dataset, config, *, num_nodes: int, epoch: int):
  """(groups [R*N, K], adjacency [R*N, K, K], order [R*N]): the groups of an epoch and their
  order; R = `train.repeats_per_epoch` rounds of groups, each round drawn afresh
  (`train.anchor_order`: a permutation per epoch, or the list order as the release's loader).
  With `train.shuffle_members` each round's members are then shuffled among its groups."""
  r = config.train.repeats_per_epoch
  labels = dataset.label_matrix()
  rounds = [sampler.make_groups(labels, num_nodes, seed=config.seed, epoch=epoch * r + j,
                                rule=config.train.group_rule)
            for j in range(r)]
  groups = np.concatenate([g for g, _ in rounds])
  adjacency = np.concatenate([a for _, a in rounds])
  if config.train.shuffle_members:
    # Within each round, so that `round` (cams.oaa_rounds) keeps its meaning.
    rng = np.random.default_rng([config.seed, epoch, 2])
    groups = np.concatenate([rng.permutation(g.reshape(-1)).reshape(g.shape) for g, _ in rounds])
    adjacency = sampler.adjacency_of(labels, groups)
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

  Each image: resize (`data.resize_mode`), colour jitter, random crop (none when
  `data.crop_size` is 0), random flip (`data.flip`), normalise.
  """
  norm_lib.resolve(normalization)  # a bad spec fails here, naming itself
  loader = loader_module(config)
  pi, pc = _process(process_index, process_count)
  b = _per_process(global_batch, pc, 'train.batch_size')
  groups, adjacency, order = epoch_groups(dataset, config, num_nodes=num_nodes, epoch=epoch)
  steps = steps_per_epoch(len(groups), global_batch)
  rows = order[:steps * global_batch].reshape(steps, pc, b)[start_batch:, pi].reshape(-1)
  labels = dataset.label_matrix().astype(np.float32)
  items = {
      'group': rows.astype(np.int64),  # the row in the epoch's groups: seeds its draws
      'index': groups[rows].astype(np.int32),
      'labels': labels[groups[rows]],
      'adjacency': adjacency[rows].astype(np.float32),
      'round': (rows // (len(groups) // config.train.repeats_per_epoch)).astype(np.int32),
  }
  return loader.train_batches(dataset, config, items, batch=b, epoch=epoch,
                              normalization=normalization)


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
  loader = loader_module(config)
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
  return loader.eval_batches(dataset, config, index, batch=batch_size, pad_to=pad_to,
                             normalization=normalization, with_masks=with_masks,
                             with_rgb=with_rgb, resize=resize, square=square)


def seg_positions(num_examples, seed, global_batch, b, pi, start_step):
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
  loader = loader_module(config)
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
  positions = seg_positions(len(dataset), config.seed, global_batch, b, pi, start_step)
  return loader.seg_batches(dataset, config, label_paths, positions, batch=b,
                            normalization=normalization)


def groups_per_s(dataset, config, num_batches: int, epoch: int = 0) -> float:
  """Groups per second of `train_iterator` over `num_batches` batches of `epoch`; the first
  batch (set-up: tracing, the thread pool, the first reads) is not timed."""
  normalization = config.data.normalization
  if normalization == 'auto':
    normalization = 'imagenet_rgb'
  it = train_iterator(dataset, config, num_nodes=config.model.num_nodes,
                      global_batch=config.train.batch_size, epoch=epoch,
                      normalization=normalization, process_index=0, process_count=1)
  next(it)
  t0 = time.perf_counter()
  done = 0
  for batch in it:
    done += batch['images'].shape[0]
    if done >= num_batches * config.train.batch_size:
      break
  rate = done / max(time.perf_counter() - t0, 1e-9)
  if hasattr(it, 'close'):
    it.close()  # the numpy loader's threads stop at once
  return rate


def benchmark(config, num_batches: int) -> float:
  """Groups per second delivered by `train_iterator` on the configured training split.

  Prints the figure; the first batch (graph construction, group sampling) is not timed.
  """
  from gwsss_jax.data import datasets  # pylint: disable=g-import-not-at-top
  dataset = datasets.load_split(config, config.data.train_split)
  rate = groups_per_s(dataset, config, num_batches)
  print(f'input pipeline ({config.data.loader}): {rate:.1f} groups/s '
        f'({config.model.num_nodes} images of {input_size(config)}px each, '
        f'batch {config.train.batch_size})')
  return rate
