"""The group-wise classifier (gwsss_jax/models/classifier.py): readouts (Eq. 9), loss (Eq. 12),
CAMs, equivariance, gradients, mixed precision and K = 1, against numpy/torch computations."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gwsss_jax import config as config_lib
from gwsss_jax.models import classifier as clf
from gwsss_jax.models.graph import label_adjacency

L = 5


def model_config(**overrides):
  m = config_lib.base_config().model
  m.width = 0.0625
  m.node_dim = 8
  m.graph_steps = 2
  for key, value in overrides.items():
    m[key] = value
  return m


@functools.lru_cache(maxsize=None)
def _init(cfg_items, b, k, size):
  cfg = model_config(**dict(cfg_items))
  model = clf.build_classifier(cfg, L)
  images = jnp.asarray(np.random.RandomState(0).rand(b, k, size, size, 3).astype(np.float32))
  adjacency = jnp.ones((b, k, k), bool)
  shapes = jax.eval_shape(lambda: model.init({'params': jax.random.PRNGKey(0)}, images, adjacency,
                                             False))
  return cfg, model, random_variables(shapes)


def random_variables(shapes, seed=0):
  """He-scaled random kernels, small random biases, BatchNorm statistics (0, 1): activations of
  O(1) through the network, without compiling the initialisers (slow on CPU)."""
  rs = np.random.RandomState(seed)

  def fill(path, a):
    name = path[-1].key
    if name == 'kernel':
      value = rs.randn(*a.shape) * np.sqrt(2.0 / np.prod(a.shape[:-1]))
    elif name in ('mean', 'var'):
      value = np.full(a.shape, 0.0 if name == 'mean' else 1.0)
    elif name == 'scale':  # BatchNorm: small, or the 33 residual additions blow activations up
      value = 0.3 + 0.03 * rs.randn(*a.shape)
    else:
      value = 0.1 * rs.randn(*a.shape)
    return jnp.asarray(value, jnp.float32)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def setup(b=2, k=3, size=32, **overrides):
  return _init(tuple(sorted(overrides.items())), b, k, size)


def images_and_labels(b, k, size, seed=0):
  rs = np.random.RandomState(seed)
  images = rs.rand(b, k, size, size, 3).astype(np.float32)
  labels = (rs.rand(b, k, L) > 0.6).astype(np.float32)
  labels[..., 0] = 1.0  # every image has a class
  return images, labels


_JITTED = {}


def forward(model, variables, images, adjacency, train=False, seed=0):
  """model.apply under jit, compiled once per model, mode and shapes (shared by tests)."""
  if (model, train) not in _JITTED:
    _JITTED[model, train] = jax.jit(
        lambda v, x, a, key: model.apply(v, x, a, train, rngs={'dropout': key}))
  return _JITTED[model, train](variables, images, adjacency, jax.random.PRNGKey(seed))


def np_bce_mean_over_classes(logits, labels):
  logits = np.asarray(logits, np.float64)
  return np.mean(np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits))),
                 axis=-1)


@pytest.mark.parametrize('variant', ['paper', 'release'])
def test_shapes_and_eq9_readouts(variant):
  cfg, model, v = setup(variant=variant)
  images, labels = images_and_labels(2, 3, 32)
  logits, out = forward(model, v, images, label_adjacency(labels))
  assert logits.shape == (2, 3, L) and out['logits_mid'].shape == (2, 3, L)
  assert out['cam_graph'].shape == out['cam_mid'].shape == (2, 3, 4, 4, L)
  assert all(out[key].dtype == jnp.float32 for key in ('logits_mid', 'cam_graph', 'cam_mid'))
  h0, h_final = np.asarray(out['h0'], np.float64), np.asarray(out['hT'], np.float64)
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), v['params'])
  if variant == 'paper':
    # Eq. (9): l^g = GAP(phi_r(h^T)); the intermediate readout l^m = GAP(phi_m(h^0)).
    cam_g = h_final @ p['classifier_graph']['kernel'][0, 0] + p['classifier_graph']['bias']
    cam_m = h0 @ p['classifier_mid']['kernel'][0, 0] + p['classifier_mid']['bias']
  else:
    cam_g, cam_m = h_final, h0  # the nodes are the class maps
  np.testing.assert_allclose(out['cam_graph'], cam_g, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out['cam_mid'], cam_m, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(logits, cam_g.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out['logits_mid'], cam_m.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('variant', ['paper', 'release'])
def test_eq12_loss(variant):
  cfg = model_config(variant=variant, loss_lambda=0.3)
  rs = np.random.RandomState(1)
  logits, mid = rs.randn(2, 3, L) * 3, rs.randn(2, 3, L) * 3
  labels = (rs.rand(2, 3, L) > 0.5).astype(np.float32)
  loss, terms = clf.loss_fn(jnp.asarray(logits, jnp.float32),
                            {'logits_mid': jnp.asarray(mid, jnp.float32)}, jnp.asarray(labels), cfg)
  ce_g, ce_m = np_bce_mean_over_classes(logits, labels), np_bce_mean_over_classes(mid, labels)
  np.testing.assert_allclose(terms['loss_graph'], ce_g.mean(), rtol=1e-5)
  np.testing.assert_allclose(terms['loss_mid'], ce_m.mean(), rtol=1e-5)
  if variant == 'paper':
    want = np.mean(ce_g + 0.3 * ce_m)  # Eq. (12) averaged over the images
  else:  # the release: per group (0.3 * sum of 3 intermediate + sum of 3 graph terms) / 6
    t = lambda x: torch.tensor(x, dtype=torch.float64)
    want = np.mean([
        (0.3 * sum(F.multilabel_soft_margin_loss(t(mid[b, i:i + 1]), t(labels[b, i:i + 1]))
                   for i in range(3))
         + sum(F.multilabel_soft_margin_loss(t(logits[b, i:i + 1]), t(labels[b, i:i + 1]))
               for i in range(3))).item() / 6 for b in range(2)])
  np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_class_activation_maps():
  rs = np.random.RandomState(2)
  out = {'cam_graph': jnp.asarray(rs.randn(2, 3, 4, 5, L), jnp.float32),
         'cam_mid': jnp.asarray(rs.randn(2, 3, 4, 5, L), jnp.float32)}
  g, m = np.asarray(out['cam_graph']), np.asarray(out['cam_mid'])
  classes = [3, 1]
  cams = clf.class_activation_maps(out, (16, 20), classes=classes)
  np.testing.assert_allclose(cams['graph'], g[..., classes])
  np.testing.assert_allclose(cams['intermediate'], m[..., classes])
  np.testing.assert_allclose(cams['ensemble'], (g[..., classes] + m[..., classes]) / 2, rtol=1e-6)
  for name, low in (('graph', g), ('ensemble', (g + m) / 2)):
    nchw = torch.tensor(low[..., classes].reshape(6, 4, 5, 2)).permute(0, 3, 1, 2)
    up = F.interpolate(nchw, size=(16, 20), mode='bilinear', align_corners=False)
    np.testing.assert_allclose(cams[f'{name}_up'], up.permute(0, 2, 3, 1).numpy().reshape(
        2, 3, 16, 20, 2), rtol=1e-5, atol=1e-5)
  per_image = np.array(rs.randint(0, L, (2, 3, 2)))
  cams = clf.class_activation_maps(out, (8, 10), classes=per_image)
  for b in range(2):
    for k in range(3):
      np.testing.assert_allclose(cams['graph'][b, k], g[b, k][..., per_image[b, k]])
  assert set(clf.class_activation_maps(out, (8, 10))) == {
      'graph', 'intermediate', 'ensemble', 'graph_up', 'intermediate_up', 'ensemble_up'}


def test_cams_for_export():
  rs = np.random.RandomState(3)
  g, m = rs.randn(2, 3, 4, 4, L), rs.randn(2, 3, 4, 4, L)
  labels = (rs.rand(2, 3, L) > 0.5).astype(np.float32)
  got = clf.cams_for_export({'cam_graph': jnp.asarray(g, jnp.float32),
                             'cam_mid': jnp.asarray(m, jnp.float32)}, jnp.asarray(labels))
  for b in range(2):
    for k in range(3):
      for c in range(L):
        att = np.maximum((g[b, k, ..., c] + m[b, k, ..., c]) / 2, 0)
        want = att / (att.max() + 1e-8) * labels[b, k, c]
        np.testing.assert_allclose(got[b, k, ..., c], want, rtol=1e-5, atol=1e-6)


def test_permutation_equivariance_of_the_classifier():
  _, model, v = setup(b=1, k=4, num_nodes=4)
  images, labels = images_and_labels(1, 4, 32, seed=4)
  adjacency = label_adjacency(labels)
  perm = np.array([3, 1, 0, 2])
  logits, out = forward(model, v, images, adjacency)
  logits_p, out_p = forward(model, v, images[:, perm], np.asarray(adjacency)[:, perm][:, :, perm])
  np.testing.assert_allclose(logits_p, np.asarray(logits)[:, perm], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out_p['cam_mid'], np.asarray(out['cam_mid'])[:, perm], rtol=1e-5,
                             atol=1e-6)


def _grads(model, variables, images, labels, cfg):
  """Gradients of the training loss (graph dropout on); also returns the logits."""
  def loss(params):
    logits, out = model.apply({**variables, 'params': params}, images, label_adjacency(labels),
                              True, rngs={'dropout': jax.random.PRNGKey(1)})
    return clf.loss_fn(logits, out, labels, cfg)[0], logits
  (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables['params'])
  return grads, logits


@pytest.mark.parametrize('variant', ['paper', 'release'])
def test_gradients_reach_every_parameter(variant):
  cfg, model, v = setup(variant=variant)
  images, labels = images_and_labels(2, 3, 32, seed=5)
  grads, _ = _grads(model, v, jnp.asarray(images), jnp.asarray(labels), cfg)
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  assert any(path[0].key == 'backbone' for path, _ in flat)
  assert any(path[0].key == 'graph' for path, _ in flat)
  dead = [jax.tree_util.keystr(path) for path, g in flat if not np.any(np.asarray(g) != 0)]
  assert not dead, dead


def test_resnet_backbone_frozen_bn_gradients():
  """ResNet-101 trunk: BatchNorm statistics in `batch_stats`, frozen BN gets zero gradients,
  the trunk's convolutions and every new layer get gradients."""
  cfg, model, v = setup(b=1, k=2, size=32, backbone='resnet101', graph_steps=1)
  assert 'batch_stats' in v and 'backbone' in v['batch_stats']
  images, labels = images_and_labels(1, 2, 32, seed=6)
  grads, _ = _grads(model, v, jnp.asarray(images), jnp.asarray(labels), cfg)
  trunk_conv_alive = []
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    name, nonzero = jax.tree_util.keystr(path), bool(np.any(np.asarray(g) != 0))
    if path[0].key != 'backbone':
      assert nonzero, name
    elif any('bn' in p.key for p in path[1:-1]):
      assert not nonzero, name
    else:
      trunk_conv_alive.append(nonzero)
  assert np.mean(trunk_conv_alive) > 0.9


@pytest.mark.parametrize('variant', ['paper', 'release'])
def test_bfloat16_activations_float32_outputs(variant):
  _, model32, v = setup(variant=variant)
  model16 = model32.clone(dtype=jnp.bfloat16)
  images, labels = images_and_labels(2, 3, 32, seed=7)
  adjacency = label_adjacency(labels)
  logits16, eval16 = forward(model16, v, images, adjacency)
  _, eval32 = forward(model32, v, images, adjacency)
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda p: p.dtype == jnp.float32, v))
  assert eval16['hT'].dtype == jnp.bfloat16
  assert all(x.dtype == jnp.float32 for x in (logits16, eval16['cam_graph'], eval16['cam_mid']))
  for key in ('cam_mid', 'cam_graph'):
    scale = np.abs(np.asarray(eval32[key])).max()
    np.testing.assert_allclose(eval16[key], eval32[key], atol=0.05 * scale)


def test_single_image_groups():
  cfg, model, v = setup(b=2, k=1, num_nodes=1)
  images, labels = images_and_labels(2, 1, 32, seed=8)
  grads, logits = _grads(model, v, jnp.asarray(images), jnp.asarray(labels), cfg)
  assert logits.shape == (2, 1, L) and np.all(np.isfinite(logits))
  assert np.any(np.asarray(grads['graph']['step']['gru']['out_gate']['kernel']) != 0)


def test_dropout_rng_only_in_training():
  _, model, v = setup()
  images, labels = images_and_labels(2, 3, 32)
  adjacency = label_adjacency(labels)
  a, _ = forward(model, v, images, adjacency, train=False)
  b, _ = forward(model, v, images, adjacency, train=False)
  np.testing.assert_array_equal(a, b)  # deterministic without any RNG
  with pytest.raises(Exception, match='dropout'):
    jax.eval_shape(lambda: model.apply(v, images, adjacency, True))
  _, model_off, _ = setup(graph_dropout=False)
  # No RNG needed when graph dropout is off.
  jax.eval_shape(lambda: model_off.apply(v, images, adjacency, True))


@pytest.mark.parametrize('init', ['he', 'release'])
def test_extra_conv_init(init):
  """`model.extra_conv_init`: the paper variant's three extra convs start He-normal with zero
  biases, or as the release's: N(0, 0.01) weights, biases U(+-1/sqrt(fan_in))."""
  cfg = model_config(extra_conv_init=init)
  model = clf.build_classifier(cfg, L)
  images = jnp.zeros((1, 3, 32, 32, 3), jnp.float32)
  params = jax.jit(lambda key: model.init({'params': key}, images, jnp.ones((1, 3, 3), bool),
                                          False))(jax.random.PRNGKey(0))['params']
  for i in (1, 2, 3):
    kernel = np.asarray(params[f'extra_conv{i}']['kernel'])
    bias = np.asarray(params[f'extra_conv{i}']['bias'])
    fan_in = np.prod(kernel.shape[:-1])
    if init == 'he':
      assert kernel.std() == pytest.approx(np.sqrt(2.0 / fan_in), rel=0.1)
      assert not bias.any()
    else:
      assert kernel.std() == pytest.approx(0.01, rel=0.1)
      bound = 1 / np.sqrt(fan_in)
      assert np.abs(bias).max() <= bound and bias.std() == pytest.approx(bound / np.sqrt(3),
                                                                           rel=0.35)
