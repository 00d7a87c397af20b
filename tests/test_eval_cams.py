"""CAM and pseudo-label evaluation against an independent per-image computation, and the
picture grids."""

import importlib.util
import logging
import os
import shutil

import ml_collections
import numpy as np
import pytest
from PIL import Image

from gwsss_jax.cams import export
from gwsss_jax.cams import pseudo
from gwsss_jax.cams import vis
from gwsss_jax.common.errors import UserError
from gwsss_jax.data import core
from gwsss_jax.data import datasets
from gwsss_jax.data import palette
from gwsss_jax.stages import eval_cams
from gwsss_jax.stages import pseudo_labels

THRESHOLDS = (0.2, 0.5, 0.8)
NAMES = ('cat', 'dog', 'car')


def _irnet_labels(high_res, keys, t):
  """IRNet's eval_cam: pad a background channel of value t, argmax, keys + 1."""
  cams = np.pad(high_res, ((1, 0), (0, 0), (0, 0)), mode='constant', constant_values=t)
  return np.pad(np.asarray(keys) + 1, (1, 0), mode='constant')[np.argmax(cams, axis=0)]


def test_sweep_labels_match_irnet():
  rng = np.random.default_rng(0)
  cams = rng.random((3, 9, 11)).astype(np.float32)
  cams[1, 0, 0] = 0.5  # a tie with the background
  keys = np.array([2, 5, 7])
  got = eval_cams.sweep_labels(cams, keys, (0.1, 0.5, 0.9))
  for t, labels in zip((0.1, 0.5, 0.9), got):
    np.testing.assert_array_equal(labels, _irnet_labels(cams, keys, t))
  assert (eval_cams.sweep_labels(np.zeros((0, 2, 2)), [], (0.3,)) == 0).all()


def _miou(pairs, num_classes):
  """Dataset-level mIoU from pixel sets (no confusion matrix), ignore 255 on either side."""
  inter, union = np.zeros(num_classes), np.zeros(num_classes)
  for pred, gt in pairs:
    valid = (gt != 255) & (pred != 255)
    for c in range(num_classes):
      p, g = (pred == c) & valid, (gt == c) & valid
      inter[c] += np.count_nonzero(p & g)
      union[c] += np.count_nonzero(p | g)
  return np.mean(inter[union > 0] / union[union > 0])


@pytest.fixture
def run_dir(tmp_path):
  """Three images with ground truth, CAM files with all readouts, and pseudo labels for two."""
  rng = np.random.default_rng(0)
  workdir = str(tmp_path / 'run')
  examples, data = [], []
  for i, (h, w) in enumerate([(24, 32), (30, 20), (16, 16)]):
    keys = np.sort(rng.choice(3, size=1 + i % 2, replace=False))
    gt = np.zeros((h, w), np.uint8)
    gt[h // 4:3 * h // 4, w // 4:w // 2] = keys[0] + 1
    gt[h // 4:3 * h // 4, w // 2:3 * w // 4] = keys[-1] + 1
    gt[0, :] = 255
    img_path, mask_path = str(tmp_path / f'im{i}.png'), str(tmp_path / f'gt{i}.png')
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(img_path)
    palette.save_label_png(mask_path, gt)
    maps = {r: rng.random((len(keys), h // 4, w // 4)).astype(np.float32)
            for r in export.READOUTS}
    record = export.make_record(keys, maps, (h, w), 'ensemble', 'group_inference')
    export.save_record(export.cam_path(workdir, f'im{i}'), record)
    label = None
    if i < 2:
      label = np.where(rng.random((h, w)) < 0.7, gt, 255).astype(np.uint8)
      label[rng.random((h, w)) < 0.1] = 0
      palette.save_label_png(pseudo.label_path(workdir, f'im{i}'), label)
    examples.append(core.Example(f'im{i}', img_path, mask_path, tuple(keys)))
    data.append((record, gt, label))
  return workdir, core.Dataset(examples, NAMES, 'train'), data


def test_metrics_match_an_independent_computation(run_dir):
  workdir, ds, data = run_dir
  tasks = [(export.cam_path(workdir, ex.name), ex.mask_path,
            pseudo.label_path(workdir, ex.name), THRESHOLDS, 4) for ex in ds.examples]
  out, table = eval_cams.summarize(eval_cams.accumulate(tasks, 1), THRESHOLDS, NAMES)
  for r in export.READOUTS:
    per_t = []
    for t in THRESHOLDS:
      pairs = []
      for record, gt, _ in data:
        hr = export.normalize_maps(export.resize_maps(record[f'cam_{r}'], gt.shape))
        pairs.append((_irnet_labels(hr, record['keys'], t), gt))
      per_t.append(_miou(pairs, 4))
    b = int(np.argmax(per_t))
    assert out[f'eval_cams/cam_miou/{r}'] == pytest.approx(per_t[b], abs=1e-9)
    assert out[f'eval_cams/cam_best_threshold/{r}'] == THRESHOLDS[b]
    assert out[f'eval_cams/cam_miou_sweep/{r}/0.50'] == pytest.approx(per_t[1], abs=1e-9)
  assert out['eval_cams/cam_miou'] == out['eval_cams/cam_miou/ensemble']
  labelled = [(label, gt) for _, gt, label in data if label is not None]
  assert out['eval_cams/pseudo_label_miou'] == pytest.approx(_miou(labelled, 4), abs=1e-9)
  pixels = sum(label.size for label, _ in labelled)
  assert out['eval_cams/pseudo_label_coverage'] == pytest.approx(
      sum(np.count_nonzero(label != 255) for label, _ in labelled) / pixels)
  assert out['eval_cams/pseudo_label_images'] == 2 and out['eval_cams/images'] == 3
  for key in ('iou_per_class/00_background', 'precision_per_class/01_cat',
              'recall_per_class/03_car'):
    assert f'eval_cams/pseudo_label/{key}' in out and f'eval_cams/cam/{key}' in out
  assert '| pseudo labels |' in table and '| CAM (graph) |' in table and '| dog |' in table


def _out_of_range(run_dir):
  """Image 0's ground truth with pixels of values 5, 100 and 254 (3 classes: 0..3 and 255)."""
  workdir, ds, data = run_dir
  gt = data[0][1].copy()
  gt[1, :3], gt[2, :2], gt[3, :1] = 5, 100, 254
  palette.save_label_png(ds.examples[0].mask_path, gt)
  return workdir, ds, data, gt


def _tasks(workdir, ds, *skip_bad):
  return [(export.cam_path(workdir, ex.name), ex.mask_path,
           pseudo.label_path(workdir, ex.name), THRESHOLDS, 4, *skip_bad)
          for ex in ds.examples]


def test_mask_values_out_of_range_stop_naming_file_and_values(run_dir):
  workdir, ds, _, _ = _out_of_range(run_dir)
  with pytest.raises(UserError, match=rf'{ds.examples[0].mask_path}: mask values out of range '
                                      r'0\.\.3 .*: 5 \(3 px\), 100 \(2 px\), 254 \(1 px\)'):
    eval_cams.accumulate(_tasks(workdir, ds), 1)


def test_mask_values_out_of_range_are_ignore_under_skip_bad(run_dir, caplog):
  workdir, ds, data, gt = _out_of_range(run_dir)
  with caplog.at_level(logging.WARNING):
    got = eval_cams.accumulate(_tasks(workdir, ds, True), 1)
  assert f'{ds.examples[0].mask_path}: 6 pixels with mask values out of range' in caplog.text
  data[0][1][...] = np.where(np.isin(gt, (5, 100, 254)), 255, gt)
  palette.save_label_png(ds.examples[0].mask_path, data[0][1])
  want = eval_cams.accumulate(_tasks(workdir, ds), 1)
  for key in want:
    np.testing.assert_array_equal(got[key], want[key])


def test_stages_reading_masks_through_tf_data_check_them_first(run_dir):
  # eval_seg and the oracle train_seg call this before their pipelines.
  _, ds, _, _ = _out_of_range(run_dir)
  data_config = ml_collections.ConfigDict({'num_classes': 3, 'skip_bad': False})
  with pytest.raises(UserError, match=rf'{ds.examples[0].mask_path}: mask values out of range'):
    datasets.check_mask_values(ds, data_config)
  data_config.skip_bad = True
  datasets.check_mask_values(ds, data_config)


def test_pictures(run_dir):
  workdir, ds, _ = run_dir
  config = ml_collections.ConfigDict({'seed': 0, 'cams': {'num_vis': 2}})
  paths = eval_cams.write_pictures(config, workdir, ds, ds.examples)
  assert len(paths) == 2 and all(os.path.exists(p) for p in paths)
  with Image.open(paths[0]) as img:
    w, h = img.size
  rec = export.load_record(export.cam_path(workdir, os.path.basename(paths[0])[:-4]))
  # Rows: input/GT/pseudo label, then one per class; columns: the three readouts.
  assert (w, h) == (3 * vis.TILE, (1 + len(rec['keys'])) * (vis.TILE + vis.TITLE_H))


def test_stages_end_to_end_on_the_builtin_dataset(tmp_path, capsys):
  """OAA store (maps made from the ground truth) -> export_cams -> pseudo_labels -> eval_cams."""
  import cv2  # pylint: disable=g-import-not-at-top
  from gwsss_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from gwsss_jax.cams import oaa  # pylint: disable=g-import-not-at-top
  from gwsss_jax.common.errors import UserError  # pylint: disable=g-import-not-at-top
  from gwsss_jax.stages import export_cams  # pylint: disable=g-import-not-at-top

  config = config_lib.base_config()
  config.data.name = 'synthetic'
  config.data.num_classes = 6
  config.data.train_split = 'train'
  config.data.saliency_dir = 'SalMaps'
  config.data.synthetic.num_train = 10
  config.data.synthetic.num_val = 1
  config.data.synthetic.size = 48
  config.pseudo.num_workers = 2
  config.cams.num_vis = 2
  workdir = str(tmp_path / 'run')
  datasets.prepare(config, workdir)
  train = datasets.load_split(config, 'train')
  labels = train.label_matrix()
  store = oaa.OAAStore.open(workdir, labels, (8, 8), process_index=0)
  for i, ex in enumerate(train.examples):
    gt = palette.read_label_png(ex.mask_path)
    cams = np.stack([cv2.resize((gt == c + 1).astype(np.float32), (8, 8),
                                interpolation=cv2.INTER_AREA) for c in range(6)], -1)
    store.update([i], cams[None], np.ones((1, 6)), 0.1, False)
  store.flush()

  out = export_cams.run(config, workdir)
  assert out['export_cams/images'] == 10 and out['export_cams/missing_maps'] == 0
  out_plain = labelled = pseudo_labels.run(config, workdir)
  assert 'pseudo_labels/miou_crf' not in labelled and labelled['pseudo_labels/miou_no_crf'] > 0.3
  assert labelled['pseudo_labels/images'] == 10
  coverage = [np.mean(palette.read_label_png(pseudo.label_path(workdir, ex.name)) != 255)
              for ex in train.examples]
  assert labelled['pseudo_labels/mean_coverage'] == pytest.approx(np.mean(coverage), abs=1e-12)
  assert labelled['pseudo_labels/all_ignored'] == sum(c == 0 for c in coverage)
  # A repeated run, and one resumed after an interruption, report the same figures (18.7).
  assert pseudo_labels.run(config, workdir) == labelled
  for ex in train.examples[:4]:
    os.remove(pseudo.label_path(workdir, ex.name))
  capsys.readouterr()
  assert pseudo_labels.run(config, workdir) == labelled
  assert '4 labels written, 6 kept' in capsys.readouterr().out
  out = eval_cams.run(config, workdir)
  assert out['eval_cams/images'] == 10 and out['eval_cams/pictures'] == 2
  assert out['eval_cams/cam_miou'] > 0.5  # maps made from the ground truth
  assert 0.0 < out['eval_cams/pseudo_label_coverage'] <= 1.0
  assert out['eval_cams/pseudo_label_miou'] > 0.3
  assert '| pseudo labels |' in capsys.readouterr().out
  assert len(os.listdir(os.path.join(workdir, 'vis'))) == 2

  # The dense CRF: the reference in the worker pool (crf.impl='auto' picks it on a CPU where
  # pydensecrf2 imports), then JAX on 2 of the simulated devices.
  config.cams.crf = True
  assert config.crf.impl == 'auto'
  shutil.rmtree(pseudo.label_dir(workdir))
  capsys.readouterr()
  ref = pseudo_labels.run(config, workdir)
  if importlib.util.find_spec('pydensecrf') is not None:
    assert "dense CRF (reference; crf.impl='auto' on a CPU)" in capsys.readouterr().out
  assert ref['pseudo_labels/images'] == 10 and ref['pseudo_labels/miou_crf'] > 0.3
  assert ref['pseudo_labels/miou_no_crf'] == out_plain['pseudo_labels/miou_no_crf']
  names = [ex.name for ex in train.examples]
  read = lambda: np.stack([palette.read_label_png(pseudo.label_path(workdir, n))
                           for n in names])
  ref_labels = read()
  config.crf.impl = 'jax'
  config.crf.batch_size = 2
  shutil.rmtree(pseudo.label_dir(workdir))
  jx = pseudo_labels.run(config, workdir)
  assert np.mean(read() == ref_labels) >= 0.98
  assert abs(jx['pseudo_labels/miou_crf'] - ref['pseudo_labels/miou_crf']) < 0.01
  resumed = pseudo_labels.run(config, workdir)  # labels on disk: read back and scored again
  assert resumed == jx
  config.cams.crf = False
  config.cams.method = 'group_inference'
  with pytest.raises(UserError, match='export.json'):  # cams/ holds the OAA export
    export_cams.run(config, workdir)
