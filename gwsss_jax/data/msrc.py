"""MSRC-v2 (591 photographs, 23 classes), mapped to a label space of `data.msrc_labels`.

  <root>/Images/<name>.bmp                      the photographs (320x213 or 213x320)
  <root>/newsegmentations_mats/<name>_GT.mat    cleaned-up labels (Malisiewicz & Efros): `newseg`
                                                segment ids (1-based), `newlabels` the 1-based
                                                class of each segment; a segment id past the end
                                                of `newlabels` is void
  <root>/GroundTruth/<name>_GT.bmp              or the original distribution's colour masks
                                                (MSRC's colour code, `msrc_colours`)

The `.mat` files are used when both exist. MSRC's classes, in the order of both formats:
`MSRC_CLASSES`. Label space 'voc' keeps the 12 classes PASCAL VOC also has (person = face +
body); every other class becomes background (0) and void becomes 255.

The masks are converted once into palette PNGs in a VOC-layout cache directory
(`<data.cache_dir>/msrc_<labels>/`, the run's `<workdir>/cache` by default), with
`class_names.txt` and the split lists `ImageSets/Segmentation/{train,val}.txt`; writes are atomic
and `index.json` (keyed by the root, the label source and the label space) spares later runs the
conversion. Image-level labels are the classes present in the converted masks.

The split (`split_names`): within each category (the image-name prefix, MSRC's row), images
sorted by their number; every third one (the 3rd, 6th, ...) goes to 'val', the others to
'train' (about 2/3). Images with no object class are left out of 'train' (the classifier, CAMs
and pseudo labels need one) and counted in the log; 'val' keeps them.
"""

import concurrent.futures
import json
import os
import re

from absl import logging
import numpy as np
from PIL import Image

from gwsss_jax.common import io as gio
from gwsss_jax.common.errors import UserError
from gwsss_jax.data import core
from gwsss_jax.data import palette

MSRC_CLASSES = ('building', 'grass', 'tree', 'cow', 'horse', 'sheep', 'sky', 'mountain',
                'aeroplane', 'water', 'face', 'car', 'bicycle', 'flower', 'sign', 'bird', 'book',
                'chair', 'road', 'cat', 'dog', 'body', 'boat')
# Label spaces: (class name, the MSRC classes it takes) in class order; the rest is background.
LABEL_SPACES = {
    'voc': (('aeroplane', ('aeroplane',)), ('bicycle', ('bicycle',)), ('bird', ('bird',)),
            ('boat', ('boat',)), ('car', ('car',)), ('cat', ('cat',)), ('chair', ('chair',)),
            ('cow', ('cow',)), ('dog', ('dog',)), ('horse', ('horse',)),
            ('person', ('face', 'body')), ('sheep', ('sheep',))),
}
SPLITS = ('train', 'val')
_INDEX_VERSION = 1


def class_names(labels: str) -> tuple:
  return tuple(name for name, _ in LABEL_SPACES[labels])


def lookup_table(labels: str) -> np.ndarray:
  """uint8 [256]: MSRC id (0 void, 1 + index in MSRC_CLASSES) -> label of the space."""
  lut = np.full(256, palette.IGNORE, np.uint8)
  lut[1:1 + len(MSRC_CLASSES)] = 0
  for c, (_, members) in enumerate(LABEL_SPACES[labels]):
    for member in members:
      lut[1 + MSRC_CLASSES.index(member)] = c + 1
  return lut


def split_names(names) -> dict:
  """{'train': [...], 'val': [...]}: every third image of each category (sorted) to 'val'."""
  def key(name):
    return [int(p) if p.isdigit() else p for p in re.split(r'[_]', name)]

  by_category = {}
  for name in sorted(names, key=key):
    by_category.setdefault(name.split('_')[0], []).append(name)
  out = {'train': [], 'val': []}
  for members in by_category.values():
    for i, name in enumerate(members):
      out['val' if i % 3 == 2 else 'train'].append(name)
  return out


def read_mat(path: str) -> np.ndarray:
  """uint8 [H, W] MSRC ids (0 void) of a cleaned-up `_GT.mat`; UserError naming the file."""
  import scipy.io  # pylint: disable=g-import-not-at-top
  try:
    mat = scipy.io.loadmat(path)
    seg = np.asarray(mat['newseg'])
    seg_labels = np.asarray(mat['newlabels']).astype(np.int64).reshape(-1)
  except (OSError, ValueError, KeyError, TypeError, NotImplementedError,
          scipy.io.matlab.MatReadError) as e:
    raise UserError(f'unreadable MSRC label file {path}: {e!r}') from None
  if seg.ndim != 2:
    raise UserError(f'{path}: newseg must be a 2-D map, got shape {seg.shape}')
  bad = seg_labels[(seg_labels < 1) | (seg_labels > len(MSRC_CLASSES))]
  if bad.size:
    raise UserError(f'{path}: segment class {int(bad[0])} out of range 1..{len(MSRC_CLASSES)}')
  table = np.zeros(max(int(seg.max(initial=0)), len(seg_labels)) + 1, np.uint8)
  table[1:1 + len(seg_labels)] = seg_labels  # segment ids past the end stay 0 (void)
  return table[np.clip(seg.astype(np.int64), 0, None)]


def msrc_colours() -> np.ndarray:
  """uint8 [24, 3]: the colour of void and of each MSRC class. It is the VOC colour map's entry
  1 + i for the classes up to chair and 3 + i from road on (entries 19 and 20 are unused)."""
  index = [0] + [1 + i if i <= MSRC_CLASSES.index('chair') else 3 + i
                 for i in range(len(MSRC_CLASSES))]
  return palette.voc_colormap()[index]


def read_colour_mask(path: str) -> np.ndarray:
  """uint8 [H, W] MSRC ids (0 void) of an original `GroundTruth/<name>_GT.bmp` colour mask."""
  try:
    with Image.open(path) as img:
      rgb = np.asarray(img.convert('RGB'), np.int64)
  except (OSError, SyntaxError, ValueError) as e:
    raise UserError(f'unreadable MSRC colour mask {path}: {e}') from None
  colours = msrc_colours().astype(np.int64)
  code = np.full(1 << 24, -1, np.int64)
  code[(colours[:, 0] << 16) | (colours[:, 1] << 8) | colours[:, 2]] = np.arange(len(colours))
  ids = code[(rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]]
  if (ids < 0).any():
    y, x = np.argwhere(ids < 0)[0]
    raise UserError(f'{path}: colour {tuple(int(v) for v in rgb[y, x])} at row {y}, column '
                    f'{x} is not in the MSRC colour code')
  return ids.astype(np.uint8)


def _sources(root: str):
  """(label source kind, {name: label path}) from the `.mat` folder, else GroundTruth/."""
  mat_dir = os.path.join(root, 'newsegmentations_mats')
  gt_dir = os.path.join(root, 'GroundTruth')
  for kind, folder, suffix in (('mat', mat_dir, '_GT.mat'), ('colour', gt_dir, '_GT.bmp')):
    if os.path.isdir(folder):
      return kind, {f[:-len(suffix)]: os.path.join(folder, f)
                    for f in sorted(os.listdir(folder)) if f.endswith(suffix)}
  raise UserError(f'config.data.root={root!r}: no MSRC labels (neither {mat_dir} nor {gt_dir})')


def cache_root(data_config) -> str:
  if not data_config.cache_dir:
    raise UserError('config.data.cache_dir is empty: the MSRC reader converts the masks there '
                    '(gwsss_jax.main sets it to <workdir>/cache)')
  return os.path.join(data_config.cache_dir, f'msrc_{data_config.msrc_labels}')


def _convert(name, image_path, label_path, kind, out_path, lut):
  """(labels, None) after writing the converted mask, or (None, problem)."""
  if label_path is None:
    return None, f'no label file for image {image_path}'
  if image_path is None:
    return None, f'label file {label_path} has no image {name}.bmp'
  size = core.header_size(image_path)
  if size is None:
    return None, f'unreadable image {image_path}'
  try:
    ids = read_mat(label_path) if kind == 'mat' else read_colour_mask(label_path)
  except UserError as e:
    return None, str(e)
  if ids.shape != (size[1], size[0]):
    return None, (f'mask {label_path} is {ids.shape[1]}x{ids.shape[0]} but its image '
                  f'{image_path} is {size[0]}x{size[1]}')
  mask = lut[ids]
  palette.save_label_png(out_path, mask)
  values = np.unique(mask)
  return [int(v) - 1 for v in values if v not in (0, palette.IGNORE)], None


def build_index(root: str, labels: str, out_dir: str, num_workers: int = 8) -> dict:
  """Converts every mask into `out_dir` and returns the index (labels, problems, split)."""
  kind, label_files = _sources(root)
  image_dir = os.path.join(root, 'Images')
  if not os.path.isdir(image_dir):
    raise UserError(f'config.data.root={root!r}: no Images/ folder')
  images = {f[:-4]: os.path.join(image_dir, f) for f in sorted(os.listdir(image_dir))
            if f.lower().endswith('.bmp')}
  names = sorted(set(images) | set(label_files))
  if not names:
    raise UserError(f'config.data.root={root!r}: no image in {image_dir}')
  lut = lookup_table(labels)
  mask_dir = os.path.join(out_dir, 'SegmentationClass')
  os.makedirs(mask_dir, exist_ok=True)

  def convert(name):
    return _convert(name, images.get(name), label_files.get(name), kind,
                    os.path.join(mask_dir, name + '.png'), lut)

  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    results = dict(zip(names, pool.map(convert, names)))
  lists = os.path.join(out_dir, 'ImageSets', 'Segmentation')
  split = split_names(images)
  for s, members in split.items():
    gio.atomic_write_text(os.path.join(lists, f'{s}.txt'), '\n'.join(members) + '\n')
  gio.atomic_write_text(os.path.join(out_dir, 'class_names.txt'),
                        '\n'.join(class_names(labels)) + '\n')
  return {'signature': _signature(root, kind, labels), 'split': split,
          'labels': {n: r[0] for n, r in results.items() if r[1] is None},
          'problems': [r[1] for r in results.values() if r[1] is not None]}


def _signature(root, kind, labels):
  """What the index depends on: a file added to or removed from a folder changes its mtime."""
  folders = ('Images', 'newsegmentations_mats' if kind == 'mat' else 'GroundTruth')
  mtimes = [os.stat(os.path.join(root, f)).st_mtime_ns for f in folders]
  return [_INDEX_VERSION, os.path.abspath(root), kind, labels] + mtimes


def load(data_config, split: str) -> core.Dataset:
  """The examples of MSRC's 'train' or 'val' split (see the module docstring)."""
  labels = data_config.msrc_labels
  if labels not in LABEL_SPACES:
    raise UserError(f'config.data.msrc_labels={labels!r}: choose from '
                    f'{", ".join(map(repr, LABEL_SPACES))}')
  names = class_names(labels)
  if data_config.num_classes != len(names):
    raise UserError(f'config.data.num_classes={data_config.num_classes} but MSRC label space '
                    f'{labels!r} has {len(names)} classes (without background)')
  if split not in SPLITS:
    raise UserError(f'MSRC split {split!r}: choose from {", ".join(SPLITS)} '
                    '(config.data.train_split / val_split)')
  root = data_config.root
  out_dir = cache_root(data_config)
  index_path = os.path.join(out_dir, 'index.json')
  index = None
  if os.path.isfile(index_path):
    with open(index_path) as f:
      index = json.load(f)
    kind, _ = _sources(root)
    if index.get('signature') != _signature(root, kind, labels):
      index = None
  if index is None:
    logging.info('converting the MSRC masks of %s into %s', root, out_dir)
    index = build_index(root, labels, out_dir)
    gio.atomic_write_text(index_path, json.dumps(index))
  bad = core.BadItems(data_config.skip_bad)
  for problem in index['problems']:
    bad(problem)
  mask_dir = os.path.join(out_dir, 'SegmentationClass')
  image_dir = os.path.join(root, 'Images')
  examples, no_object = [], 0
  for name in index['split'][split]:
    if name not in index['labels']:
      continue  # a bad item, reported above
    classes = tuple(index['labels'][name])
    if split == 'train' and not classes:
      no_object += 1
      continue
    examples.append(core.Example(name, os.path.join(image_dir, name + '.bmp'),
                            os.path.join(mask_dir, name + '.png'), classes))
  if no_object:
    print(f'[msrc] {split}: {no_object} image(s) without an object class left out of '
          'classifier training', flush=True)
  if not examples:
    raise UserError(f'config.data.root={root!r}: no usable image in MSRC split {split!r}')
  if bad.count:
    logging.warning('MSRC: skipped %d bad item(s) (data.skip_bad=True)', bad.count)
  return core.Dataset(examples, names, split, num_skipped=bad.count)
