"""The train_cls stage end to end on a tiny built-in dataset: a run killed with SIGKILL at a
random step and restarted with the same command ends with bitwise the parameters (and OAA
store) of an uninterrupted run; a finished run is skipped; its record (artifact.load) gives the
model back."""

import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from demo_config import demo_config
from gwsss_jax.data import datasets
from gwsss_jax.stages import train_cls
from gwsss_jax.train import artifact
from gwsss_jax.train import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {
    'data.synthetic.num_train': 24, 'data.synthetic.num_val': 8, 'data.synthetic.size': 48,
    'data.crop_size': 32, 'data.resize': 40, 'model.width': 0.0625, 'model.node_dim': 16,
    'train.batch_size': 4, 'train.num_epochs': 2, 'train.log_every_steps': 1,
    'train.checkpoint_every_steps': 2, 'stages': 'train_cls',
}
TOTAL = 12  # 24 images / 4 groups per step = 6 steps per epoch, 2 epochs


def _config(data_root):
  return demo_config(OVERRIDES, data_root)


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
  config = _config('')
  root = str(tmp_path_factory.mktemp('synthetic') / 'data')
  config.data.root = root
  datasets.prepare(config, '')
  return root


@pytest.fixture()
def compile_cache(tmp_path_factory):
  """A persistent compilation cache shared by the three runs (two here, one subprocess)."""
  directory = str(tmp_path_factory.getbasetemp() / 'jax_cache')
  before = jax.config.jax_compilation_cache_dir
  jax.config.update('jax_compilation_cache_dir', directory)
  yield directory
  jax.config.update('jax_compilation_cache_dir', before)


def _kill_at_random_step(workdir, data_root, cache_dir):
  flags = [f'--config.{k}={v}' for k, v in OVERRIDES.items()] + [
      f'--config.data.root={data_root}']
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir,
             PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get('PYTHONPATH')) if p))
  os.makedirs(workdir, exist_ok=True)
  log_path = os.path.join(workdir, 'killed.log')
  kill_at = random.Random().randint(1, TOTAL - 2)
  with open(log_path, 'w') as log:
    proc = subprocess.Popen(
        [sys.executable, '-m', 'gwsss_jax.main', f'--config={ROOT}/configs/demo.py',
         f'--workdir={workdir}'] + flags, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
  deadline = time.time() + 400
  step = 0
  while proc.poll() is None and time.time() < deadline and step < kill_at:
    time.sleep(0.02)
    with open(log_path) as f:
      lines = [l for l in f.read().splitlines() if l.startswith('[train_cls] step ')]
    step = int(lines[-1].split()[2].split('/')[0]) if lines else 0
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  with open(log_path) as f:
    assert step >= kill_at, f.read()[-3000:]
  return step


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted(tmp_path, data_root, compile_cache):
  config = _config(data_root)
  interrupted = str(tmp_path / 'interrupted')
  killed_at = _kill_at_random_step(interrupted, data_root, compile_cache)
  ckpt = checkpoint.Checkpointer(artifact.classifier_dir(interrupted))
  assert (ckpt.latest_step() or 0) < TOTAL
  ckpt.close()

  resumed = train_cls.run(config, interrupted)
  reference = train_cls.run(_config(data_root), str(tmp_path / 'reference'))
  assert resumed['train_cls/steps'] == reference['train_cls/steps'] == TOTAL
  assert np.isfinite(resumed['train_cls/final_loss'])
  assert 0.0 <= reference['train_cls/mAP'] <= 1.0 and 'train_cls/f1' in reference

  _, got, _ = artifact.load(artifact.classifier_dir(interrupted), config=config)
  _, want, _ = artifact.load(artifact.classifier_dir(str(tmp_path / 'reference')), config=config)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(x, y, err_msg=f'{jax.tree_util.keystr(path)}, '
                                                f'killed after step {killed_at}')
  for name in ('process_0.u8', 'process_0.written'):
    with open(os.path.join(interrupted, 'oaa', name), 'rb') as a, \
        open(tmp_path / 'reference' / 'oaa' / name, 'rb') as b:
      assert a.read() == b.read(), name
  assert os.listdir(os.path.join(interrupted, 'tensorboard', 'train_cls'))

  # Complete: skipped; its figures stay in metrics/train_cls.json, where the pipeline put them.
  assert train_cls.run(config, interrupted) == {}


def test_oaa_rounds_feeds_only_the_first_round(tmp_path, data_root):
  """A single-image run that repeats its images twice an epoch: with `cams.oaa_rounds=1` each
  map is the max over a subset of the updates that `oaa_rounds=0` takes (the classifier is the
  same), every slot still gets its one update, and some maps are strictly smaller."""
  from gwsss_jax.cams import oaa  # pylint: disable=g-import-not-at-top
  overrides = dict(OVERRIDES, **{
      'model.num_nodes': 1, 'model.graph_steps': 0, 'train.repeats_per_epoch': 2,
      'train.num_epochs': 1, 'train.checkpoint_every_steps': 100, 'cams.oaa_first_epoch': 0,
      'cams.oaa_members': 'all', 'cams.prob_threshold': 0.0, 'cams.oaa_fill_last_epoch': False})
  stores = {}
  for rounds in (0, 1):
    config = demo_config(dict(overrides, **{'cams.oaa_rounds': rounds}), data_root)
    workdir = str(tmp_path / f'rounds{rounds}')
    assert train_cls.run(config, workdir)['train_cls/steps'] == 12  # 24 images x 2 / 4
    labels = datasets.load_split(config, config.data.train_split).label_matrix()
    stores[rounds] = oaa.MergedOAA(workdir, labels)
  assert stores[0].num_missing() == stores[1].num_missing() == 0
  smaller = 0
  for i in range(24):
    every, first = stores[0].get(i), stores[1].get(i)
    assert sorted(every) == sorted(first)
    for c in every:
      assert (first[c] <= every[c]).all(), (i, c)
      smaller += int((first[c] < every[c]).any())
  assert smaller > 0
