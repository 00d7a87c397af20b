"""configs/release.py on a tiny built-in dataset: the square, uncropped input trains the release
variant, and its OAA policy writes nothing in the first epoch and every anchor's map by the end
of the last (the release's `epoch > 0` and last-epoch fill)."""

import numpy as np

from demo_config import demo_config
from gwsss_jax import config as config_lib
from gwsss_jax.cams import oaa
from gwsss_jax.data import datasets
from gwsss_jax.stages import train_cls

OVERRIDES = {
    'data.name': 'synthetic', 'data.num_classes': 6, 'data.train_split': 'train',
    'data.val_split': '', 'data.synthetic.num_train': 8, 'data.synthetic.num_val': 2,
    'data.synthetic.size': 48, 'data.resize': 32, 'model.width': 0.0625,
    'train.batch_size': 4,  # the release's 1, times the 4 simulated devices
    'train.num_epochs': 2, 'train.log_every_steps': 1, 'train.checkpoint_every_steps': 100,
    'stages': 'train_cls',
}


def test_release_preset_trains_and_accumulates_from_the_second_epoch(tmp_path):
  config = demo_config(OVERRIDES, '', name='release')
  config.data.root = str(tmp_path / 'data')
  config_lib.validate(config)
  assert (config.data.resize_mode, config.data.crop_size, config.data.flip) == ('square', 0, False)
  datasets.prepare(config, '')
  workdir = str(tmp_path / 'run')
  labels = datasets.load_split(config, 'train').label_matrix()
  config.train.max_steps = 2  # the first epoch (8 anchors, 4 per step)
  first = train_cls.run(config, workdir)
  assert first['train_cls/steps'] == 2 and np.isfinite(first['train_cls/final_loss'])
  merged = oaa.MergedOAA(workdir, labels)
  assert merged.map_hw == (4, 4)  # the 32 x 32 input at output stride 8
  assert not any(merged.get(i) for i in range(len(labels)))
  config.train.max_steps = -1  # resume into the second (last) epoch
  assert train_cls.run(config, workdir)['train_cls/steps'] == 4
  merged = oaa.MergedOAA(workdir, labels)
  for i in range(len(labels)):
    assert sorted(merged.get(i)) == np.flatnonzero(labels[i]).tolist(), i
