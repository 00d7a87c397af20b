"""Pseudo-label rules on synthetic maps with known answers, one rule at a time, and the
pseudo_labels stage's handling of saliency files."""

import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from gwsss_jax.cams import export
from gwsss_jax.cams import pseudo
from gwsss_jax.common.errors import UserError
from gwsss_jax.data import datasets
from gwsss_jax.data import palette
from gwsss_jax.stages import pseudo_labels

LOOSE = dict(conflict_threshold=1.0, saliency_bg_threshold=256, fg_ignore_threshold=1.0,
             min_fg_fraction=0.0)


def test_threshold_label_is_irnet_argmax():
  cams = np.array([[[0.1, 0.5, 0.9, 0.3]],
                   [[0.2, 0.7, 0.1, 0.3]]], np.float32)
  keys = np.array([4, 11])
  # IRNet: pad a background channel of value t, argmax, then (keys + 1)[channel].
  label = pseudo.threshold_label(cams, keys, 0.3)
  np.testing.assert_array_equal(label, [[0, 12, 5, 0]])  # a tie at 0.3 goes to background
  assert label.dtype == np.uint8
  np.testing.assert_array_equal(pseudo.threshold_label(np.zeros((0, 1, 3)), [], 0.2),
                                [[0, 0, 0]])


def test_saliency_argmax_background_is_one_minus_saliency():
  cams = np.array([[[0.2, 0.6, 1.0]]], np.float32)
  sal = np.array([[51, 153, 0]], np.uint8)  # background scores 0.8, 0.4, 1.0
  label = pseudo.saliency_label(cams, [2], sal, **LOOSE)
  np.testing.assert_array_equal(label, [[0, 3, 0]])  # third pixel: tie -> background


def test_class_maps_are_normalised_by_their_max():
  cams = np.array([[[1.0, 2.0]], [[4.0, 1.0]]], np.float32)  # -> [0.5, 1.0] and [1.0, 0.25]
  sal = np.array([[255, 255]], np.uint8)
  label = pseudo.saliency_label(cams, [0, 1], sal, **LOOSE)
  np.testing.assert_array_equal(label, [[2, 1]])


def test_conflict_rule():
  cams = np.array([[[0.95, 0.95, 0.5]], [[0.92, 0.3, 1.0]]], np.float32)
  sal = np.array([[255, 255, 255]], np.uint8)  # background score 0
  rules = dict(LOOSE, conflict_threshold=0.9)
  label = pseudo.saliency_label(cams, [0, 1], sal, **rules)
  # Normalised: class 0 = [0.95, 0.95, 0.5] / 0.95, class 1 = [0.92, 0.3, 1.0].
  np.testing.assert_array_equal(label, [[255, 1, 2]])
  # Background and a class both above the threshold conflict too.
  label = pseudo.saliency_label(np.array([[[1.0]]]), [0], np.array([[0]], np.uint8), **rules)
  np.testing.assert_array_equal(label, [[255]])


def test_salient_background_is_ignored():
  cams = np.array([[[0.0, 0.0, 1.0]]], np.float32)
  sal = np.array([[31, 32, 255]], np.uint8)  # both first pixels labelled background
  label = pseudo.saliency_label(cams, [0], sal, **dict(LOOSE, saliency_bg_threshold=32))
  np.testing.assert_array_equal(label, [[0, 255, 1]])


def test_class_like_background_is_ignored():
  cams = np.array([[[0.85, 0.75, 1.0]]], np.float32)
  sal = np.array([[0, 0, 255]], np.uint8)  # background score 1 beats the class on pixels 0, 1
  label = pseudo.saliency_label(cams, [0], sal, **dict(LOOSE, fg_ignore_threshold=0.8))
  np.testing.assert_array_equal(label, [[255, 0, 1]])


def test_too_little_foreground_ignores_the_image():
  cams = np.zeros((1, 10, 10), np.float32)
  cams[0, 0, 0] = 1.0
  sal = np.zeros((10, 10), np.uint8)
  sal[0, 0] = 255
  rules = dict(LOOSE, min_fg_fraction=0.02)  # 1 foreground pixel of 100 < 2%
  assert (pseudo.saliency_label(cams, [3], sal, **rules) == 255).all()
  rules = dict(LOOSE, min_fg_fraction=0.01)  # 1 of 100 is enough
  label = pseudo.saliency_label(cams, [3], sal, **rules)
  assert label[0, 0] == 4 and (label.reshape(-1)[1:] == 0).all()


def test_release_defaults_on_a_scene():
  """An object region, a salient region the CAM misses, and plain background."""
  h, w = 20, 20
  cam = np.zeros((h, w), np.float32)
  cam[5:15, 5:10] = 1.0
  sal = np.zeros((h, w), np.uint8)
  sal[5:15, 5:15] = 255  # object, whose right half the CAM misses
  label = pseudo.saliency_label(cam[None], [7], sal)
  assert (label[5:15, 5:10] == 8).all()
  assert (label[5:15, 10:15] == 255).all()  # salient but labelled background
  assert (label[:5] == 0).all()


def release_gen_gt(fields, sal, atts):
  """A numpy re-statement of the release's gen_labels.py gen_gt for one image: `fields` the
  label-list line's class indices, `sal` uint8 [H, W], `atts` {class: uint8 [H, W]} (its
  feat_1/<name>_<class>.png maps; a class without one is skipped)."""
  height, width = sal.shape
  gt = np.zeros((21, height, width), dtype=np.float32)
  sal = np.array(sal, dtype=np.float32)
  conflict, bg_thr, att_thr = 0.9, 32, 0.8
  gt[0] = (1 - (sal / 255))
  sal_att = sal.copy()
  for cls in fields:
    if cls not in atts:
      continue
    att = atts[cls]
    att = (att - np.min(att)) / (np.max(att) - np.min(att) + 1e-8)
    gt[cls + 1] = att.copy()
    sal_att = np.maximum(sal_att, (att > att_thr) * 255)
  bg = np.array(gt > conflict, dtype=np.uint8)
  bg = np.sum(bg, axis=0)
  gt = gt.argmax(0).astype(np.uint8)
  gt[bg > 1] = 255
  bg = np.array(sal_att >= bg_thr, dtype=np.uint8) * np.array(gt == 0, dtype=np.uint8)
  gt[bg > 0] = 255
  out = gt
  valid = np.array((out > 0) & (out < 255), dtype=int).sum()
  ratio = float(valid) / float(height * width)
  if ratio < 0.01:
    out[...] = 255
  return out


def test_minmax_rule_matches_the_release_gen_labels():
  rng = np.random.default_rng(0)
  checked = 0
  for trial in range(40):
    h, w = 24, 31
    keys = np.sort(rng.choice(20, rng.integers(1, 4), replace=False))
    # Smooth-ish uint8 maps (the release reads resized 0..255 PNGs) with an offset, so that
    # min-max and max scaling differ.
    atts = {}
    for c in keys:
      base = rng.integers(0, 60) + rng.random((h // 4 + 1, w // 4 + 1)) * rng.integers(50, 196)
      atts[int(c)] = np.kron(base, np.ones((4, 4)))[:h, :w].astype(np.uint8)
    sal = (np.clip(rng.normal(0.5, 0.4, (h, w)), 0, 1) * 255).astype(np.uint8)
    if trial % 5 == 0:
      sal[:] = 255  # no background: the 1% rule and the conflicts decide
    want = release_gen_gt(keys.tolist(), sal, atts)
    cams = np.stack([atts[int(c)] for c in keys]).astype(np.float32)
    got = pseudo.saliency_label(cams, keys, sal, cam_norm='minmax')
    np.testing.assert_array_equal(got, want, err_msg=f'trial {trial}')
    checked += int((want != 255).sum() > 0)
    if trial == 0:  # the rule is not the max rule on these maps
      assert not np.array_equal(pseudo.saliency_label(cams, keys, sal, cam_norm='max'), want)
  assert checked > 20
  np.testing.assert_allclose(pseudo.minmax_maps(np.full((1, 2, 2), 7.0)), np.zeros((1, 2, 2)))


def _config(root, saliency_dir):
  c = ml_collections.ConfigDict()
  c.data = ml_collections.ConfigDict({'root': root, 'saliency_dir': saliency_dir})
  return c


def _cam_file(tmp_path, name, hw=(6, 8)):
  rec = export.make_record([1], {'ensemble': np.ones((1, 3, 4), np.float32)}, hw, 'ensemble',
                           'oaa')
  path = str(tmp_path / 'cams' / f'{name}.npy')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  export.save_record(path, rec)
  return path


def test_saliency_dir_resolution(tmp_path):
  assert datasets.saliency_root(_config('/data/voc', 'SalMaps')) == '/data/voc/SalMaps'
  assert datasets.saliency_root(_config('/data/voc', '/abs/sal')) == '/abs/sal'
  assert datasets.saliency_root(_config('/data/voc', '')) == ''


def test_missing_or_corrupt_saliency_names_the_file(tmp_path):
  cam = _cam_file(tmp_path, 'img1')
  params = dict(LOOSE, bg_threshold=0.2, cam_norm='max', num_classes=4, crf=None)
  missing = str(tmp_path / 'sal' / 'img1.png')
  with pytest.raises(UserError, match='img1.png'):
    pseudo_labels.label_image(('img1', cam, missing, str(tmp_path / 'out.png'), '', '', params))
  os.makedirs(tmp_path / 'sal')
  with open(missing, 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n this is not a png')
  with pytest.raises(UserError, match='corrupt saliency map .*img1.png'):
    pseudo_labels.label_image(('img1', cam, missing, str(tmp_path / 'out.png'), '', '', params))
  # A label written by an earlier run is read back for the figures, its saliency header too.
  palette.save_label_png(str(tmp_path / 'out.png'), np.zeros((6, 8), np.uint8))
  with pytest.raises(UserError, match='corrupt saliency map .*img1.png'):
    pseudo_labels.label_image(('img1', cam, missing, str(tmp_path / 'out.png'), '', '', params))
  os.remove(missing)
  with pytest.raises(UserError, match='saliency map not found: .*img1.png'):
    pseudo_labels.label_image(('img1', cam, missing, str(tmp_path / 'out.png'), '', '', params))


def test_label_image_writes_palette_png(tmp_path):
  cam = _cam_file(tmp_path, 'img1')
  sal_path = str(tmp_path / 'img1_sal.png')
  Image.fromarray(np.full((6, 8), 255, np.uint8)).save(sal_path)
  out = str(tmp_path / 'pl' / 'img1.png')
  params = dict(LOOSE, bg_threshold=0.2, cam_norm='max', num_classes=4, crf=None)
  pseudo_labels.label_image(('img1', cam, sal_path, out, '', '', params))
  with Image.open(out) as img:
    assert img.mode == 'P'
  np.testing.assert_array_equal(palette.read_label_png(out), np.full((6, 8), 2, np.uint8))
