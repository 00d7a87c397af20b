"""The data check: every file the configured stages will read is found, by its header, before
the first training step (a 16-bit mask, a missing saliency map), and alone with
`--config.stages=check_data`."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from gwsss_jax import config as config_lib
from gwsss_jax import pipeline
from gwsss_jax.common.errors import UserError
from gwsss_jax.data import datasets
from gwsss_jax.stages import train_cls

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {'data.num_classes': 3, 'data.train_split': 'train', 'data.val_split': 'val',
             'data.synthetic.num_train': 6, 'data.synthetic.num_val': 3,
             'data.synthetic.size': 48, 'data.saliency_dir': 'SalMaps'}


def _config(stages):
  config = config_lib.base_config()
  config.data.name = 'synthetic'
  for key, value in OVERRIDES.items():
    section, name = key.rsplit('.', 1)
    target = config
    for part in section.split('.'):
      target = target[part]
    target[name] = value
  config.stages = stages
  return config


@pytest.fixture
def workdir(tmp_path, monkeypatch):
  """A workdir with the built-in dataset, where training the classifier fails the test."""
  datasets.prepare(_config('train_cls'), str(tmp_path))

  def no_training(config, workdir):
    raise AssertionError('train_cls ran before the data were checked')
  monkeypatch.setattr(train_cls, 'run', no_training)
  return tmp_path


def _train_names(workdir):
  with open(workdir / 'data' / 'synthetic' / 'ImageSets' / 'Segmentation' / 'train.txt') as f:
    return f.read().split()


def test_a_16_bit_mask_stops_the_run_before_training(workdir):
  name = _train_names(workdir)[2]
  mask = workdir / 'data' / 'synthetic' / 'SegmentationClass' / f'{name}.png'
  Image.fromarray(np.array(Image.open(mask)).astype(np.uint16) * 257).save(mask)
  assert Image.open(mask).mode.startswith('I')
  with pytest.raises(UserError, match=f'mask {mask} is of mode I.*8-bit'):
    pipeline.run(_config('train_cls,export_cams,pseudo_labels,eval_cams'), str(workdir))


def test_a_missing_saliency_map_stops_the_run_before_training(workdir):
  name = _train_names(workdir)[4]
  saliency = workdir / 'data' / 'synthetic' / 'SalMaps' / f'{name}.png'
  os.remove(saliency)
  with pytest.raises(UserError, match=f'saliency map not found: {saliency}'):
    pipeline.run(_config('train_cls,export_cams,pseudo_labels'), str(workdir))
  # Without pseudo_labels among the stages, saliency maps are not needed.
  with pytest.raises(AssertionError, match='train_cls ran'):
    pipeline.run(_config('train_cls'), str(workdir))


def test_check_data_alone_on_the_command_line(workdir):
  name = _train_names(workdir)[1]
  os.remove(workdir / 'data' / 'synthetic' / 'SalMaps' / f'{name}.png')
  command = [sys.executable, '-m', 'gwsss_jax.main', '--config=configs/demo.py',
             f'--workdir={workdir}', '--config.stages=check_data'] + [
                 f'--config.{k}={v}' for k, v in OVERRIDES.items()]
  proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1].startswith('error: saliency map not found: ')
  assert not os.path.exists(workdir / 'cls_checkpoints')
  (workdir / 'data' / 'synthetic' / 'SalMaps' / f'{name}.png').write_bytes(
      (workdir / 'data' / 'synthetic' / 'SalMaps' / f'{_train_names(workdir)[0]}.png')
      .read_bytes())
  proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert '[check_data] 24 files present with readable headers' in proc.stdout, proc.stdout
