"""The built-in dataset: determinism, VOC layout, labels that agree with masks, ignore bands,
imperfect saliency, co-occurrence, and `ensure`'s idempotence and resumption."""

import collections
import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from gwsss_jax.common.errors import UserError
from gwsss_jax.data import palette
from gwsss_jax.data import synthetic

PARAMS = dict(seed=0, num_train=20, num_val=8, size=64)
NUM_CLASSES = 6
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _files(root):
  """{relative path: bytes} of every file under root."""
  out = {}
  for dirpath, _, names in os.walk(root):
    for name in names:
      path = os.path.join(dirpath, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


def _read_list(root, split):
  with open(os.path.join(root, 'ImageSets', 'Segmentation', f'{split}.txt')) as f:
    return f.read().split()


def _read_cls(root, split):
  out = {}
  with open(os.path.join(root, 'ImageSets', 'Segmentation', f'{split}_cls.txt')) as f:
    for line in f:
      name, *classes = line.split()
      out[name] = [int(c) for c in classes]
  return out


def _masks(root):
  return {name: palette.read_label_png(os.path.join(root, 'SegmentationClass', name + '.png'))
          for split in synthetic.SPLITS for name in _read_list(root, split)}


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  return synthetic.ensure(str(tmp_path_factory.mktemp('syn') / 'a'), **PARAMS)


def test_same_seed_is_byte_identical(dataset, tmp_path):
  again = synthetic.ensure(str(tmp_path / 'b'), **PARAMS)
  assert _files(dataset) == _files(again)


def test_other_seed_differs(dataset, tmp_path):
  other = _files(synthetic.ensure(str(tmp_path / 'c'), **dict(PARAMS, seed=1)))
  ref = _files(dataset)
  assert set(other) == set(ref)
  images = [k for k in ref if k.startswith('JPEGImages')]
  assert all(other[k] != ref[k] for k in images)


def test_layout_complete(dataset):
  train, val = _read_list(dataset, 'train'), _read_list(dataset, 'val')
  assert len(train) == PARAMS['num_train'] and len(val) == PARAMS['num_val']
  assert not set(train) & set(val)
  assert all(re.fullmatch(r'syn_\d{6}', n) for n in train + val)
  for name in train + val:
    image = cv2.imread(os.path.join(dataset, 'JPEGImages', name + '.jpg'))
    assert image.shape == (PARAMS['size'], PARAMS['size'], 3)
    with Image.open(os.path.join(dataset, 'SegmentationClass', name + '.png')) as mask:
      assert mask.mode == 'P' and mask.size == (PARAMS['size'],) * 2
      assert mask.getpalette()[:6] == [0, 0, 0, 128, 0, 0]  # the VOC colour map
    with Image.open(os.path.join(dataset, 'SalMaps', name + '.png')) as sal:
      assert sal.mode == 'L' and sal.size == (PARAMS['size'],) * 2
  with open(os.path.join(dataset, 'class_names.txt')) as f:
    names = f.read().split('\n')
  assert names[-1] == '' and len(names[:-1]) == NUM_CLASSES == len(set(names[:-1]))
  assert set(_read_cls(dataset, 'train')) == set(train)
  assert set(_read_cls(dataset, 'val')) == set(val)
  assert not os.path.exists(dataset + '.partial')


def test_masks_valid_and_lists_agree(dataset):
  masks = _masks(dataset)
  for split in synthetic.SPLITS:
    for name, classes in _read_cls(dataset, split).items():
      values = set(np.unique(masks[name]).tolist())
      assert values <= set(range(NUM_CLASSES + 1)) | {255}, name
      present = sorted(v - 1 for v in values if 0 < v < 255)
      assert classes == present, name
      assert 1 <= len(classes) <= 3, name
      assert all(0 <= c < NUM_CLASSES for c in classes)


def test_ignore_bands_separate_labels(dataset):
  """Every object is outlined by 255: no two different labels touch, background included."""
  for name, mask in _masks(dataset).items():
    assert (mask == 255).any(), name
    m = mask.astype(np.int32)
    for a, b in ((m[:, 1:], m[:, :-1]), (m[1:, :], m[:-1, :])):
      touching = (a != b) & (a != 255) & (b != 255)
      assert not touching.any(), name
    # The band is thin: ignore stays a small share of the image.
    assert (mask == 255).mean() < 0.25, name


def test_saliency_is_informative_but_imperfect(dataset):
  fg_sal, bg_sal = [], []
  for name, mask in _masks(dataset).items():
    sal = cv2.imread(os.path.join(dataset, 'SalMaps', name + '.png'), cv2.IMREAD_UNCHANGED)
    fg_sal.append(sal[(mask > 0) & (mask < 255)])
    bg_sal.append(sal[mask == 0])
  fg_sal, bg_sal = np.concatenate(fg_sal), np.concatenate(bg_sal)
  assert fg_sal.mean() > bg_sal.mean() + 100
  assert (fg_sal < 64).mean() > 0.005   # missed object parts
  assert (bg_sal > 128).mean() > 0.002  # false positives


def test_co_occurrence_pairs():
  """Partner classes (0, 1), (2, 3), ... appear together far more often than other pairs."""
  rng = np.random.default_rng(0)
  together = collections.Counter()
  for _ in range(3000):
    classes = synthetic._sample_classes(rng, NUM_CLASSES)  # pylint: disable=protected-access
    assert 1 <= len(classes) == len(set(classes)) <= 3
    for i in classes:
      for j in classes:
        if i < j:
          together[(i, j)] += 1
  partner = np.mean([together[(c, c + 1)] for c in range(0, NUM_CLASSES, 2)])
  others = np.mean([n for (i, j), n in together.items() if not (i % 2 == 0 and j == i + 1)])
  assert partner > 3 * others


def test_co_occurrence_in_lists(dataset):
  lists = {**_read_cls(dataset, 'train'), **_read_cls(dataset, 'val')}
  assert any({c, c + 1} <= set(classes)
             for classes in lists.values() for c in range(0, NUM_CLASSES, 2))
  assert any(len(classes) == 1 for classes in lists.values())


def test_render_other_class_counts():
  for num_classes in (synthetic.MIN_CLASSES, synthetic.MAX_CLASSES):
    rng = np.random.default_rng(3)
    for _ in range(4):
      image, label, saliency = synthetic.render(rng, 48, num_classes)
      assert image.shape == (48, 48, 3) and label.shape == saliency.shape == (48, 48)
      assert set(np.unique(label).tolist()) <= set(range(num_classes + 1)) | {255}


def test_ensure_is_idempotent(dataset, monkeypatch):
  before = _files(dataset)

  def fail(*args, **kwargs):
    raise AssertionError('ensure regenerated a complete dataset')

  monkeypatch.setattr(synthetic, 'render', fail)
  assert synthetic.ensure(dataset, **PARAMS) == dataset
  assert _files(dataset) == before


def test_ensure_rejects_other_parameters_and_foreign_dirs(dataset, tmp_path):
  with pytest.raises(UserError, match=re.escape(dataset)):
    synthetic.ensure(dataset, **dict(PARAMS, num_train=21))
  foreign = tmp_path / 'foreign'
  foreign.mkdir()
  (foreign / 'x.txt').write_text('x')
  with pytest.raises(UserError, match=re.escape(str(foreign))):
    synthetic.ensure(str(foreign), **PARAMS)
  with pytest.raises(UserError, match='num_classes'):
    synthetic.ensure(str(tmp_path / 'd'), **PARAMS, num_classes=2)


def test_ensure_resumes_interrupted_generation(dataset, tmp_path, monkeypatch):
  root = str(tmp_path / 'r')
  write = synthetic._write_example  # pylint: disable=protected-access
  calls = []

  def interrupted(*args):
    if len(calls) == 5:
      raise KeyboardInterrupt
    calls.append(args[1])
    write(*args)

  monkeypatch.setattr(synthetic, '_write_example', interrupted)
  with pytest.raises(KeyboardInterrupt):
    synthetic.ensure(root, **PARAMS)
  assert not os.path.exists(root)  # an interrupted run is never taken for a dataset
  assert os.path.isdir(root + '.partial')

  def counting(*args):
    calls.append(args[1])
    write(*args)

  monkeypatch.setattr(synthetic, '_write_example', counting)
  synthetic.ensure(root, **PARAMS)
  total = PARAMS['num_train'] + PARAMS['num_val']
  assert len(calls) == total and len(set(calls)) == total  # the 5 done were not redone
  assert not os.path.exists(root + '.partial')
  assert _files(root) == _files(dataset)


def test_ensure_discards_partial_with_other_parameters(dataset, tmp_path, monkeypatch):
  root = str(tmp_path / 'p')
  write = synthetic._write_example  # pylint: disable=protected-access
  calls = []

  def interrupted(*args):
    if len(calls) == 3:
      raise KeyboardInterrupt
    calls.append(args[1])
    write(*args)

  monkeypatch.setattr(synthetic, '_write_example', interrupted)
  with pytest.raises(KeyboardInterrupt):
    synthetic.ensure(root, **dict(PARAMS, seed=7))
  monkeypatch.setattr(synthetic, '_write_example', write)
  synthetic.ensure(root, **PARAMS)
  assert _files(root) == _files(dataset)


def test_cli(tmp_path):
  out = tmp_path / 'cli'
  args = [sys.executable, '-m', 'gwsss_jax.data.synthetic', '--out', str(out), '--seed', '0',
          '--num_train', '3', '--num_val', '2', '--size', '48']
  proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr
  with open(out / synthetic.MANIFEST) as f:
    assert json.load(f)['num_train'] == 3
  assert len(_read_list(str(out), 'val')) == 2
  proc = subprocess.run(args[:-2] + ['--size', '64'], cwd=REPO, capture_output=True, text=True,
                        check=False)
  assert proc.returncode == 2
  assert proc.stderr.count('\n') == 1 and str(out) in proc.stderr


def test_training_seed_leaves_the_dataset_alone(tmp_path):
  # `seed` varies the training; the built-in data follow `data.synthetic.seed` only.
  from gwsss_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from gwsss_jax.data import datasets  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  config.data.name = 'synthetic'
  config.data.num_classes = 6
  config.data.synthetic.update(num_train=4, num_val=2, size=48)
  for seed, data_seed in ((0, 0), (7, 0), (7, 3)):
    config.seed, config.data.synthetic.seed = seed, data_seed
    config.data.root = str(tmp_path / f'{seed}_{data_seed}')
    datasets.prepare(config, str(tmp_path))
    with open(os.path.join(config.data.root, synthetic.MANIFEST)) as f:
      assert json.load(f)['seed'] == data_seed
  same = [open(tmp_path / d / 'JPEGImages' / 'syn_000000.jpg', 'rb').read()
          for d in ('0_0', '7_0')]
  assert same[0] == same[1]
