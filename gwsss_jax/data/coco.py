"""COCO 2014 (80 classes) from the official instances JSON, through pycocotools.

  <root>/<split>/COCO_<split>_<id>.jpg           split: train2014 (82,783) or val2014 (40,504)
  <root>/annotations/instances_<split>.json

Classes are the 80 categories in increasing category id (the standard order); image-level labels
are the categories of all annotations of an image (crowd ones included). Segmentation masks are
made once and cached as palette PNGs: 0 background, class index + 1 for each instance (larger
instances painted first, so smaller ones stay visible), and 255 (ignored) on crowd regions not
covered by an instance. The cache (`data.cache_dir/coco_masks_<split>`, else
`<root>/masks_cache_<split>`) is written file by file, atomically: an interrupted run resumes.
Its `index.json` (names, labels; keyed by the annotation file's size and time) spares later runs
parsing the JSON again.
"""

import concurrent.futures
import json
import os

from absl import logging
import numpy as np

from gwsss_jax.common import io as gio
from gwsss_jax.common.errors import UserError
from gwsss_jax.data import core
from gwsss_jax.data import palette

_INDEX_VERSION = 1


def cache_dir(data_config, split: str) -> str:
  if data_config.cache_dir:
    return os.path.join(data_config.cache_dir, f'coco_masks_{split}')
  return os.path.join(data_config.root, f'masks_cache_{split}')


def _signature(path: str) -> list:
  st = os.stat(path)
  return [_INDEX_VERSION, st.st_size, int(st.st_mtime)]


def make_mask(coco, image_id: int, height: int, width: int, class_of: dict) -> np.ndarray:
  """uint8 [H, W]: class index + 1 per instance (large first), 255 on bare crowd regions."""
  anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=None))
  mask = np.zeros((height, width), np.uint8)
  crowd = np.zeros((height, width), bool)
  for ann in sorted(anns, key=lambda a: -a.get('area', 0)):
    region = coco.annToMask(ann).astype(bool)
    if ann.get('iscrowd', 0):
      crowd |= region
    else:
      mask[region] = class_of[ann['category_id']] + 1
  mask[crowd & (mask == 0)] = palette.IGNORE
  return mask


def load(data_config, split: str, num_workers: int = 8) -> core.Dataset:
  """The examples of a COCO split, with cached masks (see the module docstring)."""
  root = data_config.root
  ann_file = os.path.join(root, 'annotations', f'instances_{split}.json')
  image_dir = os.path.join(root, split)
  if not os.path.isfile(ann_file):
    raise UserError(f'COCO annotations not found: {ann_file} (config.data.root={root!r}, '
                    f'split {split!r})')
  out_dir = cache_dir(data_config, split)
  index_path = os.path.join(out_dir, 'index.json')
  index = None
  if os.path.isfile(index_path):
    with open(index_path) as f:
      index = json.load(f)
    if index.get('signature') != _signature(ann_file):
      index = None
  if index is None:
    index = _build(ann_file, image_dir, out_dir, data_config.num_classes, num_workers)
    gio.atomic_write_text(index_path, json.dumps(index))
  names = tuple(index['class_names'])
  if len(names) != data_config.num_classes:
    raise UserError(f'config.data.num_classes={data_config.num_classes} but {ann_file} has '
                    f'{len(names)} categories')
  bad = core.BadItems(data_config.skip_bad)
  examples = []
  for name, file_name, labels, (h, w) in index['images']:
    image_path = os.path.join(image_dir, file_name)
    if not os.path.isfile(image_path):
      bad(f'{ann_file}: image {file_name} not found in {image_dir}')
      continue
    examples.append(core.Example(name, image_path, os.path.join(out_dir, name + '.png'),
                            tuple(labels)))
  examples = core.check_files(examples, bad)
  if not examples:
    raise UserError(f'{ann_file}: no usable image')
  return core.Dataset(examples, names, split, num_skipped=bad.count)


def _build(ann_file, image_dir, out_dir, num_classes, num_workers):
  """Parses the JSON, writes the missing masks, returns the index."""
  from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
  logging.info('parsing %s', ann_file)
  try:
    coco = COCO(ann_file)
  except (ValueError, KeyError) as e:
    raise UserError(f'{ann_file}: not a COCO instances file ({e})') from None
  cat_ids = sorted(coco.getCatIds())
  class_of = {c: i for i, c in enumerate(cat_ids)}
  class_names = [coco.loadCats([c])[0]['name'] for c in cat_ids]
  if len(cat_ids) != num_classes:
    raise UserError(f'config.data.num_classes={num_classes} but {ann_file} has '
                    f'{len(cat_ids)} categories')
  images = []
  for image_id in sorted(coco.getImgIds()):
    info = coco.loadImgs([image_id])[0]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=None))
    labels = sorted({class_of[a['category_id']] for a in anns})
    name = os.path.splitext(info['file_name'])[0]
    images.append([name, info['file_name'], labels, [info['height'], info['width']]])
  os.makedirs(out_dir, exist_ok=True)
  todo = [im for im in images if not os.path.isfile(os.path.join(out_dir, im[0] + '.png'))]
  if todo:
    logging.info('writing %d COCO masks to %s', len(todo), out_dir)
    ids = {os.path.splitext(coco.loadImgs([i])[0]['file_name'])[0]: i for i in coco.getImgIds()}

    def write(im):
      name, _, _, (h, w) = im
      palette.save_label_png(os.path.join(out_dir, name + '.png'),
                             make_mask(coco, ids[name], h, w, class_of))

    with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
      list(pool.map(write, todo))
  return {'signature': _signature(ann_file), 'class_names': class_names, 'images': images}
