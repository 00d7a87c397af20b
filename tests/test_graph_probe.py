"""gwsss_jax.evaluation.graph_probe: the affine fit against numpy's least squares, and the probe
on small saved classifiers (the release network without message passing is the identity)."""

import functools
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from gwsss_jax import config as config_lib
from gwsss_jax.common.errors import UserError
from gwsss_jax.data import core
from gwsss_jax.data import sampler
from gwsss_jax.evaluation import graph_probe
from gwsss_jax.models import classifier
from gwsss_jax.models import convert
from gwsss_jax.train import artifact
from gwsss_jax.train import checkpoint
from gwsss_jax.train import optim
from gwsss_jax.train import trainer
from random_weights import he_normal

NORM = convert.normalization_spec('imagenet_rgb')


def test_affine_fit_against_lstsq():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, 64))
  y = 0.3 * x + rng.normal(scale=0.2, size=x.shape) + 1.5
  a, b, r2 = graph_probe.affine_fit(x, y)
  for i in range(5):
    (ea, eb), *_ = np.linalg.lstsq(np.stack([x[i], np.ones(64)], 1), y[i], rcond=None)
    residual = y[i] - (ea * x[i] + eb)
    np.testing.assert_allclose([a[i], b[i]], [ea, eb], rtol=1e-10)
    np.testing.assert_allclose(r2[i], 1 - residual.var() / y[i].var(), rtol=1e-10)
  a, b, r2 = graph_probe.affine_fit(x, 2 * x - 3)  # exactly affine
  np.testing.assert_allclose(a, 2.0)
  np.testing.assert_allclose(b, -3.0)
  np.testing.assert_allclose(r2, 1.0)
  a, b, r2 = graph_probe.affine_fit(np.ones((1, 8)), np.arange(8.0)[None])  # constant x
  assert a[0] == 0 and b[0] == 3.5 and r2[0] == 0
  _, _, r2 = graph_probe.affine_fit(x[:1], np.full((1, 64), 2.0))  # constant y
  assert r2[0] == 1


def _workdir(tmp_path, monkeypatch, variant, steps, saved=None, name='run'):
  """A run directory with config.json and a saved classifier of random He-normal weights (or
  `saved(init_params, random_params)`, where `init_params` come from flax's init with the run's
  seed), and the dataset reader replaced by 6 random images with labels."""
  config = config_lib.base_config()
  config.model.variant = variant
  config.model.width = 0.0625
  config.model.node_dim = 8
  config.model.num_nodes = 3
  config.model.graph_steps = steps
  config.data.num_classes = 3
  config.data.crop_size = 32
  config.data.resize = 32
  model = classifier.build_classifier(config.model, 3)
  inputs = np.zeros((1, 3, 32, 32, 3), np.float32), np.ones((1, 3, 3), np.float32)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), *inputs)
  rng = np.random.default_rng(0)
  params = he_normal(shapes['params'], rng)
  if saved is not None:
    init = model.init(jax.random.key(config.seed), *inputs, train=False)['params']
    params = saved(init, params)
  workdir = tmp_path / name
  directory = artifact.classifier_dir(str(workdir))
  tx, _ = optim.classifier_optimizer(config.train, params, {}, True, 10)
  ckpt = checkpoint.Checkpointer(directory, asynchronous=False)
  ckpt.save(1, trainer.init_state(params, {}, tx, 0), force=True)
  ckpt.close()
  artifact.save(directory, artifact.classifier_record(config, NORM))
  (workdir / 'config.json').write_text(config.to_json())

  labels = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1]])
  examples = []
  for i, row in enumerate(labels):
    path = str(tmp_path / 'images' / f'im{i}.png')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    examples.append(core.Example(f'im{i}', path, None, tuple(np.flatnonzero(row))))
  dataset = core.Dataset(examples, ('a', 'b', 'c'), 'train')
  monkeypatch.setattr(graph_probe.datasets, 'load_split', lambda config, split: dataset)
  return str(workdir), labels


def test_release_network_without_message_passing_is_the_identity(tmp_path, monkeypatch):
  workdir, labels = _workdir(tmp_path, monkeypatch, 'release', 0)
  summary = graph_probe.probe(workdir, num_groups=2)
  assert summary['groups'] == 2 and summary['graph_steps'] == 0
  groups, _ = sampler.make_groups(labels, 3, 0, 0, 'greedy')
  assert summary['maps'] == labels[groups[:2]].sum()  # every positive class of the members
  np.testing.assert_allclose(summary['a_median'], 1.0, rtol=1e-6)
  np.testing.assert_allclose(summary['r2_min'], 1.0, rtol=1e-6)
  assert summary['r2_below_0.99'] == 0
  with pytest.raises(UserError, match="--reset=graph: the classifier of 'release' with 0 graph "
                                     'steps has no graph parameters'):
    graph_probe.probe(workdir, num_groups=2, reset='graph')


def test_paper_network_with_message_passing_is_not(tmp_path, monkeypatch):
  workdir, labels = _workdir(tmp_path, monkeypatch, 'paper', 1)
  summary = graph_probe.probe(workdir, num_groups=2)
  # Two class convolutions on different features: no affine relation to speak of.
  assert 0.0 <= summary['r2_min'] <= summary['r2_median'] < 0.99
  assert summary['r2_below_0.99'] > 0.5


def test_reset_puts_back_the_initialisation(tmp_path, monkeypatch):
  """`reset='graph'` probes the saved classifier with flax's initial graph; `reset='all'` the
  initial classifier whatever was saved (no `model.pretrained` here)."""
  trained, _ = _workdir(tmp_path, monkeypatch, 'paper', 1)
  initial_graph, _ = _workdir(tmp_path, monkeypatch, 'paper', 1, name='initial_graph',
                              saved=lambda init, p: dict(p, graph=init['graph']))
  initial, _ = _workdir(tmp_path, monkeypatch, 'paper', 1, name='initial',
                        saved=lambda init, p: init)
  def same(a, b):  # the initialisers run eagerly here and jitted in the probe: float rounding
    assert a['maps'] == b['maps']
    keys = [k for k in a if k.endswith(('median', 'p10', 'min', '0.99'))]
    np.testing.assert_allclose([a[k] for k in keys], [b[k] for k in keys], rtol=1e-5, atol=1e-6)

  got = graph_probe.probe(trained, num_groups=2, reset='graph')
  assert got['reset'] == 'graph'
  at_start = graph_probe.probe(initial_graph, num_groups=2)
  same(got, at_start)
  # Every graph kernel is reported: unmoved at the start, far from it with random weights.
  plain = graph_probe.probe(trained, num_groups=2)
  moved = plain['graph_weight_change']
  assert set(moved) == set(at_start['graph_weight_change']) and len(moved) >= 4
  assert all(k.startswith('step/') for k in moved), moved
  np.testing.assert_allclose(list(at_start['graph_weight_change'].values()), 0, atol=1e-5)
  np.testing.assert_allclose(list(got['graph_weight_change'].values()), 0, atol=1e-5)
  assert min(moved.values()) > 0.5
  assert abs(got['r2_median'] - plain['r2_median']) > 0.01
  same(graph_probe.probe(trained, num_groups=2, reset='all'),
       graph_probe.probe(initial, num_groups=2))
  with pytest.raises(UserError, match="--reset='graphs': one of none, graph, all"):
    graph_probe.probe(trained, reset='graphs')


def test_missing_config_is_named(tmp_path):
  with pytest.raises(UserError, match='config.json not found'):
    graph_probe.probe(str(tmp_path))
  result = subprocess.run([sys.executable, '-m', 'gwsss_jax.evaluation.graph_probe',
                           f'--workdir={tmp_path}'], capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 2, result.stderr
  assert 'config.json not found' in result.stderr and 'Traceback' not in result.stderr
