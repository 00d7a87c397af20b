"""The VOC reader on a tiny VOC-layout tree written here (palette PNG masks, JPEG images)."""

import os

import ml_collections
import numpy as np
from PIL import Image
import pytest

from gwsss_jax.common.errors import UserError
from gwsss_jax.data import palette
from gwsss_jax.data import voc

CLASSES = ('cat', 'dog', 'car', 'bus')


def write_voc(root, num_images=12, seed=0, size=(40, 48), num_classes=4, aug=False):
  """A VOC-layout tree: each image has 1-2 rectangles of random classes; returns {name: labels}."""
  rng = np.random.default_rng(seed)
  for d in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation'):
    os.makedirs(os.path.join(root, d), exist_ok=True)
  truth = {}
  for i in range(num_images):
    name = f'2007_{i:06d}'
    h, w = size
    mask = np.zeros((h, w), np.uint8)
    classes = sorted(rng.choice(num_classes, size=1 + i % 2, replace=False).tolist())
    for k, c in enumerate(classes):
      mask[4 + 10 * k:14 + 10 * k, 5:30] = c + 1
    mask[0, :] = palette.IGNORE  # a boundary line, as in VOC
    # Smooth content: JPEG decoders (PIL, TensorFlow) then agree to a grey level or so.
    coarse = rng.integers(0, 255, (4, 5, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))
    Image.fromarray(image).save(os.path.join(root, 'JPEGImages', name + '.jpg'), quality=95)
    palette.save_label_png(os.path.join(root, 'SegmentationClass', name + '.png'), mask)
    truth[name] = tuple(classes)
  names = sorted(truth)
  lists = os.path.join(root, 'ImageSets', 'Segmentation')
  with open(os.path.join(lists, 'train.txt'), 'w') as f:
    f.write('\n'.join(names[:num_images * 2 // 3]) + '\n')
  with open(os.path.join(lists, 'val.txt'), 'w') as f:
    f.write('\n'.join(names[num_images * 2 // 3:]) + '\n')
  with open(os.path.join(root, 'class_names.txt'), 'w') as f:
    f.write('background\n' + '\n'.join(CLASSES[:num_classes]) + '\n')
  if aug:
    os.makedirs(os.path.join(root, 'SegmentationClassAug'), exist_ok=True)
    for name in names:
      m = palette.read_label_png(os.path.join(root, 'SegmentationClass', name + '.png'))
      palette.save_label_png(os.path.join(root, 'SegmentationClassAug', name + '.png'), m)
    with open(os.path.join(lists, 'train_aug.txt'), 'w') as f:
      f.write('\n'.join(names) + '\n')
  return truth


def write_cls_list(path, truth, names):
  with open(path, 'w') as f:
    for n in names:
      f.write(' '.join([n] + [str(c) for c in truth[n]]) + '\n')


def data_config(root, **kw):
  d = ml_collections.ConfigDict(dict(root=str(root), num_classes=4, label_list='',
                                     train_split='train', skip_bad=False))
  d.update(kw)
  return d


@pytest.fixture
def root(tmp_path):
  return tmp_path / 'VOC2012'


def test_labels_from_masks_and_from_list_agree(root):
  truth = write_voc(str(root))
  from_masks = voc.load(data_config(root), 'train')
  names = [ex.name for ex in from_masks.examples]
  assert names == sorted(truth)[:8]
  assert from_masks.class_names == CLASSES
  for ex in from_masks.examples:
    assert ex.labels == truth[ex.name]
    assert ex.mask_path.endswith(os.path.join('SegmentationClass', ex.name + '.png'))
  write_cls_list(os.path.join(root, 'ImageSets/Segmentation/train_cls.txt'), truth, names)
  from_list = voc.load(data_config(root), 'train')
  assert [ex.labels for ex in from_list.examples] == [ex.labels for ex in from_masks.examples]
  expected = np.zeros((8, 4), bool)
  for i, n in enumerate(names):
    expected[i, list(truth[n])] = True
  np.testing.assert_array_equal(from_list.label_matrix(), expected)


def test_label_list_config_and_train_aug_prefers_aug_masks(root):
  truth = write_voc(str(root), aug=True)
  path = os.path.join(str(root), 'my_labels.txt')
  write_cls_list(path, truth, sorted(truth))
  ds = voc.load(data_config(root, label_list=path, train_split='train_aug'), 'train_aug')
  assert len(ds) == 12
  assert all('SegmentationClassAug' in ex.mask_path for ex in ds.examples)
  assert all(ex.labels == truth[ex.name] for ex in ds.examples)
  val = voc.load(data_config(root, label_list=path, train_split='train_aug'), 'val')
  assert all(os.sep + 'SegmentationClass' + os.sep in ex.mask_path for ex in val.examples)


def test_split_without_masks_needs_a_label_list(root):
  truth = write_voc(str(root))
  names = sorted(truth)
  lists = os.path.join(str(root), 'ImageSets/Segmentation')
  with open(os.path.join(lists, 'test.txt'), 'w') as f:
    f.write('\n'.join(names) + '\n')
  for n in names:
    os.remove(os.path.join(str(root), 'SegmentationClass', n + '.png'))
  with pytest.raises(UserError, match='test.txt:1'):
    voc.load(data_config(root), 'test')
  write_cls_list(os.path.join(lists, 'test_cls.txt'), truth, names)
  ds = voc.load(data_config(root), 'test')
  assert all(ex.mask_path is None for ex in ds.examples)


def test_num_classes_mismatch_names_the_key(root):
  write_voc(str(root))
  with pytest.raises(UserError, match='data.num_classes=5'):
    voc.load(data_config(root, num_classes=5), 'train')


def _bad_cases(root, truth):
  names = sorted(truth)
  lists = os.path.join(root, 'ImageSets/Segmentation')

  def missing_image():
    os.remove(os.path.join(root, 'JPEGImages', names[2] + '.jpg'))
    return 'train.txt:3'

  def unreadable_image():
    with open(os.path.join(root, 'JPEGImages', names[1] + '.jpg'), 'wb') as f:
      f.write(b'not a jpeg')
    return 'unreadable image'

  def wrong_mask_size():
    palette.save_label_png(os.path.join(root, 'SegmentationClass', names[0] + '.png'),
                           np.zeros((10, 10), np.uint8))
    return 'is 10x10'

  def class_out_of_range():
    write_cls_list(os.path.join(lists, 'train_cls.txt'), truth, names[:8])
    with open(os.path.join(lists, 'train_cls.txt'), 'a') as f:
      f.write(f'{names[3]} 1 7\n')
    return 'train_cls.txt:9'

  def unknown_name_in_list():
    with open(os.path.join(lists, 'train.txt'), 'a') as f:
      f.write('2099_000001\n')
    return 'train.txt:9'

  return [missing_image, unreadable_image, wrong_mask_size, class_out_of_range,
          unknown_name_in_list]


@pytest.mark.parametrize('case', range(5))
def test_bad_inputs_raise_or_skip(tmp_path, case):
  root = str(tmp_path / f'voc{case}')
  truth = write_voc(root)
  expect = _bad_cases(root, truth)[case]()
  with pytest.raises(UserError, match=expect.replace('.', r'\.')):
    voc.load(data_config(root), 'train')
  ds = voc.load(data_config(root, skip_bad=True), 'train')
  assert ds.num_skipped == 1
  assert len(ds) == 8 - (case not in (3, 4))


def test_empty_list_file(root):
  write_voc(str(root))
  open(os.path.join(str(root), 'ImageSets/Segmentation/train.txt'), 'w').close()
  with pytest.raises(UserError, match='train.txt: empty list file'):
    voc.load(data_config(root), 'train')
