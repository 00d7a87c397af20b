"""The MSRC-v2 reader on small MSRC-format trees written here (`.bmp` photographs, `.mat` labels
through scipy, or the original colour masks), and on the real copy when it is present."""

import os

import numpy as np
from PIL import Image
import pytest
import scipy.io

from gwsss_jax import config as config_lib
from gwsss_jax.common.errors import UserError
from gwsss_jax.data import msrc
from gwsss_jax.data import palette

# MSRC ids are 1-based in the files: README order + 1.
ID = {name: i + 1 for i, name in enumerate(msrc.MSRC_CLASSES)}
# The 'voc' label space written out by hand (class order of VOC), independent of the reader.
VOC12 = ('aeroplane', 'bicycle', 'bird', 'boat', 'car', 'cat', 'chair', 'cow', 'dog', 'horse',
         'person', 'sheep')
MSRC_COLOURS = {  # MSRC's published colour code (void black), written out by hand
    0: (0, 0, 0), ID['grass']: (0, 128, 0), ID['cow']: (0, 0, 128), ID['sky']: (128, 128, 128),
    ID['face']: (192, 128, 0), ID['body']: (64, 64, 0), ID['car']: (64, 0, 128),
    ID['road']: (128, 64, 128), ID['dog']: (128, 192, 128)}
# Per category, the MSRC classes of the segments of its images (category 3: no object class).
CONTENT = {1: ('grass', 'cow'), 2: ('sky', 'face', 'body'), 3: ('sky', 'grass'),
           4: ('road', 'car', 'dog')}


def _image(rng, h, w):
  coarse = rng.integers(0, 255, (3, 4, 3), dtype=np.uint8)
  return np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))


def write_msrc(root, per_category=5, colour=False, size=(24, 36), seed=0):
  """An MSRC-v2 tree; returns {name: uint8 [H, W] expected 'voc' mask}."""
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(root, 'Images'), exist_ok=True)
  label_dir = os.path.join(root, 'GroundTruth' if colour else 'newsegmentations_mats')
  os.makedirs(label_dir, exist_ok=True)
  expected = {}
  for cat, classes in CONTENT.items():
    for n in range(1, per_category + 1):
      name = f'{cat}_{n}_s'
      h, w = size if n % 2 else size[::-1]  # both orientations, as in MSRC
      seg = np.zeros((h, w), np.uint8)
      bands = np.array_split(np.arange(h), len(classes) + 1)
      for k, rows in enumerate(bands):
        seg[rows] = k + 1  # segment k + 1; the last band's segment has no label: void
      newlabels = np.array([[ID[c] for c in classes]], np.uint8)
      ids = np.concatenate([[0], newlabels[0], [0]])[seg]
      Image.fromarray(_image(rng, h, w)).save(os.path.join(root, 'Images', name + '.bmp'))
      if colour:
        rgb = np.zeros((h, w, 3), np.uint8)
        for v, c in MSRC_COLOURS.items():
          rgb[ids == v] = c
        Image.fromarray(rgb).save(os.path.join(label_dir, name + '_GT.bmp'))
      else:
        scipy.io.savemat(os.path.join(label_dir, name + '_GT.mat'),
                         {'newseg': seg, 'newlabels': newlabels if n % 2 else newlabels.T})
      want = np.zeros((h, w), np.uint8)
      want[ids == 0] = palette.IGNORE
      for c in classes:
        voc_name = 'person' if c in ('face', 'body') else c
        if voc_name in VOC12:
          want[ids == ID[c]] = VOC12.index(voc_name) + 1
      expected[name] = want
  return expected


def data_config(root, cache, skip_bad=False):
  c = config_lib.base_config()
  c.data.name = 'msrc'
  c.data.num_classes = 12
  c.data.root = str(root)
  c.data.cache_dir = str(cache)
  c.data.skip_bad = skip_bad
  config_lib.validate(c)
  return c.data


@pytest.mark.parametrize('colour', [False, True], ids=['mat', 'colour_masks'])
def test_masks_labels_split_and_class_names(tmp_path, colour, capsys):
  expected = write_msrc(tmp_path / 'msrc', colour=colour)
  d = data_config(tmp_path / 'msrc', tmp_path / 'cache')
  train, val = msrc.load(d, 'train'), msrc.load(d, 'val')
  assert train.class_names == val.class_names == VOC12
  # Every third image of each category (sorted by number) is 'val'; category 3 has no object
  # class, so its images are left out of 'train' (and counted) but kept in 'val'.
  assert sorted(ex.name for ex in val.examples) == sorted(
      f'{c}_{n}_s' for c in CONTENT for n in (3,))
  assert sorted(ex.name for ex in train.examples) == sorted(
      f'{c}_{n}_s' for c in (1, 2, 4) for n in (1, 2, 4, 5))
  assert '4 image(s) without an object class' in capsys.readouterr().out
  for ex in train.examples + val.examples:
    mask = palette.read_label_png(ex.mask_path)
    np.testing.assert_array_equal(mask, expected[ex.name])
    assert ex.labels == tuple(sorted(int(v) - 1 for v in np.unique(expected[ex.name])
                                     if v not in (0, 255)))
    assert Image.open(ex.image_path).size == mask.shape[::-1]
  assert {ex.labels for ex in train.examples} == {(7,), (10,), (4, 8)}  # cow, person, car+dog
  out = tmp_path / 'cache' / 'msrc_voc'
  assert (out / 'class_names.txt').read_text().split() == list(VOC12)
  assert (out / 'ImageSets' / 'Segmentation' / 'val.txt').read_text().split() == [
      f'{c}_3_s' for c in CONTENT]
  # A second load reads the index instead of converting again.
  (out / 'SegmentationClass' / '1_1_s.png').unlink()
  assert len(msrc.load(d, 'train')) == len(train)
  assert not (out / 'SegmentationClass' / '1_1_s.png').exists()


def test_split_is_stratified_and_sorted_by_number():
  names = [f'{c}_{n}_s' for c in (1, 12) for n in range(1, 11)]
  split = msrc.split_names(reversed(names))
  assert split['val'] == ['1_3_s', '1_6_s', '1_9_s', '12_3_s', '12_6_s', '12_9_s']
  assert len(split['train']) == 14 and not set(split['train']) & set(split['val'])


def _check_bad(tmp_path, damage, message):
  root = tmp_path / 'msrc'
  write_msrc(root)
  damage(root)
  with pytest.raises(UserError, match=message) as e:
    msrc.load(data_config(root, tmp_path / 'cache'), 'train')
  assert 'skip_bad' in str(e.value)
  cache = tmp_path / 'cache2'
  train = msrc.load(data_config(root, cache, skip_bad=True), 'train')
  assert train.num_skipped == 1 and len(train) >= 11


def test_missing_mat_is_named(tmp_path):
  _check_bad(tmp_path, lambda r: (r / 'newsegmentations_mats' / '1_2_s_GT.mat').unlink(),
             'no label file for image .*1_2_s.bmp')


def test_missing_image_is_named(tmp_path):
  _check_bad(tmp_path, lambda r: (r / 'Images' / '2_4_s.bmp').unlink(),
             '2_4_s_GT.mat has no image 2_4_s.bmp')


def test_unreadable_image_and_mat_are_named(tmp_path):
  _check_bad(tmp_path, lambda r: (r / 'Images' / '1_1_s.bmp').write_bytes(b'not a bmp'),
             'unreadable image .*1_1_s.bmp')
  _check_bad(tmp_path / 'b',
             lambda r: (r / 'newsegmentations_mats' / '4_5_s_GT.mat').write_bytes(b'junk'),
             'unreadable MSRC label file .*4_5_s_GT.mat')


def test_size_mismatch_and_class_out_of_range_are_named(tmp_path):
  def resize(root):
    Image.new('RGB', (10, 10)).save(root / 'Images' / '1_4_s.bmp')
  _check_bad(tmp_path, resize, r'1_4_s_GT.mat is 24x36 but its image .*1_4_s.bmp is 10x10')

  def out_of_range(root):
    scipy.io.savemat(root / 'newsegmentations_mats' / '2_1_s_GT.mat',
                     {'newseg': np.ones((24, 36), np.uint8), 'newlabels': np.array([[24]])})
  _check_bad(tmp_path / 'b', out_of_range, r'2_1_s_GT.mat: segment class 24 out of range 1..23')


def test_unknown_colour_is_named(tmp_path):
  root = tmp_path / 'msrc'
  write_msrc(root, colour=True)
  path = root / 'GroundTruth' / '1_1_s_GT.bmp'
  rgb = np.asarray(Image.open(path)).copy()
  rgb[2, 5] = (1, 2, 3)
  Image.fromarray(rgb).save(path)
  with pytest.raises(UserError, match=r'1_1_s_GT.bmp: colour \(1, 2, 3\) at row 2, column 5'):
    msrc.load(data_config(root, tmp_path / 'cache'), 'train')


def test_config_keys_are_checked(tmp_path):
  c = config_lib.base_config()
  c.data.name = 'msrc'
  with pytest.raises(UserError, match='data.num_classes=20.*12 classes'):
    config_lib.validate(c)
  c.data.num_classes = 12
  c.data.msrc_labels = 'all'
  with pytest.raises(UserError, match='data.msrc_labels'):
    config_lib.validate(c)
  c.data.msrc_labels = 'voc'
  write_msrc(tmp_path / 'msrc')
  d = data_config(tmp_path / 'msrc', tmp_path / 'cache')
  with pytest.raises(UserError, match="split 'train_aug'"):
    msrc.load(d, 'train_aug')
  with d.unlocked():
    d.cache_dir = ''
  with pytest.raises(UserError, match='data.cache_dir'):
    msrc.load(d, 'train')


def test_bmp_images_through_the_input_pipeline(tmp_path):
  from gwsss_jax.data import input_pipeline as ip  # pylint: disable=g-import-not-at-top
  write_msrc(tmp_path / 'msrc')
  c = config_lib.base_config()
  c.data.name = 'msrc'
  c.data.num_classes = 12
  c.data.root = str(tmp_path / 'msrc')
  c.data.cache_dir = str(tmp_path / 'cache')
  val = msrc.load(c.data, 'val')
  spec = {'name': 'plain', 'channel_order': 'rgb', 'mean': (0.0, 0.0, 0.0),
          'std': (1.0, 1.0, 1.0)}
  for b in ip.eval_iterator(val, c, batch_size=2, normalization=spec):
    for i, index in enumerate(b['index']):
      if index < 0:
        continue
      ex = val.examples[int(index)]
      pixels = np.asarray(Image.open(ex.image_path).convert('RGB'), np.float32)
      h, w = (int(v) for v in b['hw'][i])
      np.testing.assert_array_equal(b['images'][i, :h, :w], pixels)
      np.testing.assert_array_equal(b['masks'][i, :h, :w], palette.read_label_png(ex.mask_path))


def _real_root():
  for path in (os.environ.get('GWSSS_MSRC_ROOT', ''), '/work/shared/data/msrc_v2',
               os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'msrc_v2')):
    if path and os.path.isdir(os.path.join(path, 'newsegmentations_mats')):
      return path
  return None


@pytest.mark.skipif(_real_root() is None, reason='no MSRC-v2 copy (set GWSSS_MSRC_ROOT)')
def test_real_msrc_counts_and_class_frequencies(tmp_path, capsys):
  d = data_config(_real_root(), tmp_path / 'cache')
  train, val = msrc.load(d, 'train'), msrc.load(d, 'val')
  assert '127 image(s) without an object class' in capsys.readouterr().out
  assert (len(train), len(val)) == (268, 196)  # 395 + 196 = 591, of which 127 no object
  counts = train.label_matrix().sum(0) + val.label_matrix().sum(0)
  # Images per class, counted from the .mat files by a separate script (docs/msrc.md); person
  # is the images with a face or a body segment.
  want = {'aeroplane': 30, 'bicycle': 32, 'bird': 38, 'boat': 33, 'car': 46, 'cat': 24,
          'chair': 32, 'cow': 45, 'dog': 30, 'horse': 3, 'person': 67, 'sheep': 35}
  assert dict(zip(train.class_names, counts.tolist())) == want
  # Stratified: every category has 2/3 of its images (rounded) in train + no-object.
  val_names = {ex.name for ex in val.examples}
  for cat in range(1, 21):
    n = sum(1 for f in os.listdir(os.path.join(d.root, 'Images')) if f.startswith(f'{cat}_'))
    assert sum(1 for v in val_names if v.startswith(f'{cat}_')) == n // 3


def test_configs_load_and_validate():
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(__file__), '..', 'configs', 'msrc.py')
  spec = importlib.util.spec_from_file_location('msrc_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cpu, full = module.get_config(), module.get_config('full')
  for c in (cpu, full):
    config_lib.validate(c)
    assert c.data.name == 'msrc' and c.data.num_classes == 12 and not c.data.saliency_dir
    assert not c.data.root  # nothing points at a particular copy of the data
  assert (full.data.crop_size, full.model.num_nodes, full.model.graph_steps,
          full.train.num_epochs) == (224, 4, 3, 15)
  assert cpu.data.crop_size < 100 and cpu.model.num_nodes == 3
  with pytest.raises(ValueError, match='full'):
    module.get_config('fast')
