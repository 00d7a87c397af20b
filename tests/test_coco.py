"""The COCO reader on a small COCO-format fixture (polygons, RLE, crowd, non-contiguous ids)."""

import json
import os

import ml_collections
import numpy as np
from PIL import Image
import pytest

from gwsss_jax.common.errors import UserError
from gwsss_jax.data import coco
from gwsss_jax.data import palette

H, W = 20, 24


def rle_counts(mask):
  """Uncompressed COCO RLE of a bool mask (column-major runs, starting with zeros)."""
  flat = mask.flatten(order='F').astype(np.uint8)
  change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
  return np.diff(np.concatenate([[0], change])).tolist()


def write_coco(root, split='val2014'):
  os.makedirs(os.path.join(root, split))
  os.makedirs(os.path.join(root, 'annotations'))
  rng = np.random.default_rng(0)
  images = []
  for i in (1, 2, 3):
    name = f'COCO_{split}_{i:012d}.jpg'
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(
        os.path.join(root, split, name))
    images.append({'id': i, 'file_name': name, 'height': H, 'width': W})
  crowd = np.zeros((H, W), bool)
  crowd[2:10, 3:12] = True
  rle_region = np.zeros((H, W), bool)
  rle_region[12:18, 2:20] = True
  anns = [
      # image 1: a polygon (rectangle x 4..16, y 5..15) of category 7 -> class 2
      {'id': 1, 'image_id': 1, 'category_id': 7, 'iscrowd': 0, 'area': 120.0,
       'segmentation': [[4, 5, 16, 5, 16, 15, 4, 15]], 'bbox': [4, 5, 12, 10]},
      # image 2: a crowd RLE of category 3 (class 1) under a polygon of category 1 (class 0),
      # and a non-crowd uncompressed RLE of category 7.
      {'id': 2, 'image_id': 2, 'category_id': 3, 'iscrowd': 1, 'area': 72.0,
       'segmentation': {'size': [H, W], 'counts': rle_counts(crowd)}, 'bbox': [3, 2, 9, 8]},
      {'id': 3, 'image_id': 2, 'category_id': 1, 'iscrowd': 0, 'area': 16.0,
       'segmentation': [[6, 4, 10, 4, 10, 8, 6, 8]], 'bbox': [6, 4, 4, 4]},
      {'id': 4, 'image_id': 2, 'category_id': 7, 'iscrowd': 0, 'area': 108.0,
       'segmentation': {'size': [H, W], 'counts': rle_counts(rle_region)},
       'bbox': [2, 12, 18, 6]},
  ]
  cats = [{'id': 1, 'name': 'person'}, {'id': 3, 'name': 'car'}, {'id': 7, 'name': 'train'}]
  with open(os.path.join(root, 'annotations', f'instances_{split}.json'), 'w') as f:
    json.dump({'images': images, 'annotations': anns, 'categories': cats}, f)
  return crowd, rle_region


def config(root, **kw):
  d = ml_collections.ConfigDict(dict(root=str(root), num_classes=3, cache_dir='',
                                     skip_bad=False))
  d.update(kw)
  return d


def test_labels_masks_and_cache(tmp_path):
  root = str(tmp_path / 'coco')
  crowd, rle_region = write_coco(root)
  ds = coco.load(config(root), 'val2014')
  assert ds.class_names == ('person', 'car', 'train')
  assert [ex.labels for ex in ds.examples] == [(2,), (0, 1, 2), ()]
  m1 = palette.read_label_png(ds.examples[0].mask_path)
  assert m1.shape == (H, W) and set(np.unique(m1)) == {0, 3}
  assert (m1[6:15, 5:16] == 3).all() and (m1[:4] == 0).all() and (m1[17:] == 0).all()
  m2 = palette.read_label_png(ds.examples[1].mask_path)
  np.testing.assert_array_equal(m2[rle_region], 3)            # exact RLE region
  assert (m2[5:8, 7:10] == 1).all()                          # the small instance on top
  bare_crowd = crowd & (m2 != 1)
  assert bare_crowd.sum() > 40 and (m2[bare_crowd] == 255).all()
  assert ((m2 == 0) == ~(crowd | rle_region | (m2 == 1))).all()
  m3 = palette.read_label_png(ds.examples[2].mask_path)
  assert (m3 == 0).all()
  # Cached: a second load does not rewrite masks, and uses the index.
  before = os.stat(ds.examples[0].mask_path).st_mtime_ns
  again = coco.load(config(root), 'val2014')
  assert [ex.labels for ex in again.examples] == [ex.labels for ex in ds.examples]
  assert os.stat(ds.examples[0].mask_path).st_mtime_ns == before
  assert os.path.isfile(os.path.join(root, 'masks_cache_val2014', 'index.json'))
  # Resumable: a deleted mask is remade when the index is rebuilt.
  os.remove(ds.examples[1].mask_path)
  os.remove(os.path.join(root, 'masks_cache_val2014', 'index.json'))
  coco.load(config(root), 'val2014')
  np.testing.assert_array_equal(palette.read_label_png(ds.examples[1].mask_path), m2)


def test_cache_dir_and_errors(tmp_path):
  root = str(tmp_path / 'coco')
  write_coco(root)
  cache = str(tmp_path / 'cache')
  ds = coco.load(config(root, cache_dir=cache), 'val2014')
  assert ds.examples[0].mask_path.startswith(os.path.join(cache, 'coco_masks_val2014'))
  with pytest.raises(UserError, match='data.num_classes=80'):
    coco.load(config(root, cache_dir=str(tmp_path / 'c2'), num_classes=80), 'val2014')
  with pytest.raises(UserError, match='instances_train2014.json'):
    coco.load(config(root), 'train2014')
  os.remove(os.path.join(root, 'val2014', 'COCO_val2014_000000000002.jpg'))
  with pytest.raises(UserError, match='COCO_val2014_000000000002.jpg not found'):
    coco.load(config(root, cache_dir=cache), 'val2014')
  assert len(coco.load(config(root, cache_dir=cache, skip_bad=True), 'val2014')) == 2
