"""PASCAL VOC 2012 (with SBD's train_aug) and the built-in dataset, which shares its layout.

  <root>/JPEGImages/<name>.jpg
  <root>/SegmentationClass/<name>.png        palette PNGs, 0 background, 255 ignore
  <root>/SegmentationClassAug/<name>.png     SBD-augmented masks (train_aug), when present
  <root>/ImageSets/Segmentation/<split>.txt  one image name per line
  <root>/ImageSets/Segmentation/<split>_cls.txt  optional `name c1 c2 ...` (classes 0..L-1)
  <root>/class_names.txt                     optional, one class name a line (no background)

Image-level labels come from `data.label_list` (the training split), else `<split>_cls.txt`,
else from the masks (classes present except 0 and 255). Everything is checked at load time
(list syntax, class range, files present, image/mask sizes from the file headers), so that a
bad item is reported with its file and line instead of becoming a silent wrong label.
"""

import concurrent.futures
import os

from absl import logging
import numpy as np

from gwsss_jax.common.errors import UserError
from gwsss_jax.data import core
from gwsss_jax.data import palette

IMAGE_EXTS = ('.jpg', '.jpeg', '.png')


def class_names(root: str, num_classes: int) -> tuple:
  """`<root>/class_names.txt` (a leading 'background' line is dropped), else the VOC names."""
  path = os.path.join(root, 'class_names.txt')
  if os.path.isfile(path):
    names = tuple(line for _, line in core.read_lines(path))
    if names and names[0] == 'background':
      names = names[1:]
    source = path
  else:
    names = palette.VOC_CLASSES[1:]
    source = 'the PASCAL VOC class list'
  if len(names) != num_classes:
    raise UserError(f'config.data.num_classes={num_classes} but {source} has {len(names)} '
                    'classes (without background)')
  return names


def mask_dirs(root: str, split: str) -> list:
  """Mask directories in order of preference: SBD's augmented masks first for train_aug."""
  dirs = ['SegmentationClass', 'SegmentationClassAug']
  if 'aug' in split:
    dirs.reverse()
  return [os.path.join(root, d) for d in dirs if os.path.isdir(os.path.join(root, d))]


def find_image(image_dir: str, name: str):
  for ext in IMAGE_EXTS:
    path = os.path.join(image_dir, name + ext)
    if os.path.isfile(path):
      return path
  return None


def mask_classes(path: str, num_classes: int) -> tuple:
  """Classes 0..L-1 present in a mask (pixel values 1..L; 0 and 255 excluded)."""
  values = np.unique(palette.read_label_png(path))
  values = values[(values != 0) & (values != palette.IGNORE)]
  if values.size and values.max() > num_classes:
    raise UserError(f'{path}: mask value {int(values.max())} out of range 1..{num_classes} '
                    f'(data.num_classes={num_classes})')
  return tuple(int(v) - 1 for v in values)


def load(data_config, split: str) -> core.Dataset:
  """The examples of `split` under `data_config.root` (see the module docstring)."""
  root = data_config.root
  num_classes = data_config.num_classes
  bad = core.BadItems(data_config.skip_bad)
  names = class_names(root, num_classes)
  seg_dir = os.path.join(root, 'ImageSets', 'Segmentation')
  split_file = os.path.join(seg_dir, f'{split}.txt')
  label_file = ''
  if data_config.label_list and split == data_config.train_split:
    label_file = data_config.label_list
    if not os.path.isabs(label_file) and not os.path.isfile(label_file):
      label_file = os.path.join(root, label_file)
  elif os.path.isfile(os.path.join(seg_dir, f'{split}_cls.txt')):
    label_file = os.path.join(seg_dir, f'{split}_cls.txt')
  listed = core.read_label_list(label_file, num_classes, bad) if label_file else None
  if os.path.isfile(split_file) or listed is None:
    entries = [(n, line.split()[0]) for n, line in core.read_lines(split_file)]
    list_path = split_file
  else:  # The label list alone defines the split.
    entries = [(0, name) for name in listed]
    list_path = label_file
  image_dir = os.path.join(root, 'JPEGImages')
  dirs = mask_dirs(root, split)
  examples = []
  for n, name in entries:
    name = os.path.splitext(os.path.basename(name))[0]
    where = f'{list_path}:{n}' if n else list_path
    image_path = find_image(image_dir, name)
    if image_path is None:
      bad(f'{where}: image {name!r} not found in {image_dir}')
      continue
    mask_path = next((os.path.join(d, name + '.png') for d in dirs
                      if os.path.isfile(os.path.join(d, name + '.png'))), None)
    if listed is not None:
      if name not in listed:
        bad(f'{where}: image {name!r} has no labels in {label_file}')
        continue
      labels = listed[name]
    elif mask_path is None:
      bad(f'{where}: no label list ({split}_cls.txt or data.label_list) and no mask for '
          f'{name!r} in {", ".join(dirs) or root + "/SegmentationClass"}')
      continue
    else:
      labels = None
    examples.append(core.Example(name, image_path, mask_path, labels))
  examples = core.check_files(examples, bad)
  if any(ex.labels is None for ex in examples):
    examples = _labels_from_masks(examples, num_classes, bad)
  if not examples:
    raise UserError(f'{list_path}: no usable image in split {split!r}')
  if bad.count:
    logging.warning('%s: skipped %d bad item(s) (data.skip_bad=True)', list_path, bad.count)
  return core.Dataset(examples, names, split, num_skipped=bad.count)


def _labels_from_masks(examples, num_classes, bad, num_workers=8):
  def classes(ex):
    try:
      return mask_classes(ex.mask_path, num_classes)
    except UserError as e:
      return e

  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    found = list(pool.map(classes, examples))
  out = []
  for ex, labels in zip(examples, found):
    if isinstance(labels, UserError):
      bad(str(labels))
      continue
    out.append(core.Example(ex.name, ex.image_path, ex.mask_path, labels))
  return out
