"""`model.variant='release'` against a small torch re-statement of the release's computation,
written from ../shared/REFERENCE_NOTES.md (VGG16 'D1' trunk, three 3x3 convs + a 1x1 class conv,
co-attention with C/2 projections and a sigmoid gate, 3x3 fusion of the two incoming messages,
1x1 ConvGRU, (x * s + x) / 2 graph dropout, six-term loss), with identical weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gwsss_jax import config as config_lib
from gwsss_jax.models import classifier as clf

L, SIZE, WIDTH = 6, 32, 0.0625
VGG_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))


def t(x):
  return torch.tensor(np.asarray(x, np.float32))


class TorchRelease:
  """The release's forward for one group of three images, node by node, in torch (NCHW)."""

  def __init__(self, params, drop_rate, drop_th, steps, dropout):
    # drop_rate: the release's own --drop_rate, the drop mask's probability (1 - importance_prob)
    # The weights as torch leaves (flax's layout), so that autograd can differentiate them.
    self.p = jax.tree_util.tree_map(lambda x: t(x).requires_grad_(True), params)
    self.drop_rate, self.drop_th = drop_rate, drop_th
    self.steps, self.dropout = steps, dropout

  def conv(self, x, layer, dilation=1):
    w = layer['kernel'].permute(3, 2, 0, 1)
    b = layer['bias'] if 'bias' in layer else None
    pad = dilation * (w.shape[-1] // 2)
    return F.conv2d(x, w, b, padding=pad, dilation=dilation)

  def class_maps(self, img):
    x, bb = img, self.p['backbone']
    for block, n, _ in VGG_BLOCKS:
      for i in range(1, n + 1):
        x = F.relu(self.conv(x, bb[f'conv{block}_{i}'], dilation=2 if block == 5 else 1))
      if block <= 3:
        x = F.max_pool2d(x, 2, 2)
      elif block == 4:
        x = F.max_pool2d(x, 3, 1, padding=1)
    for i in (0, 2, 4):
      x = F.relu(self.conv(x, self.p[f'extra_convs_{i}']))
    return self.conv(x, self.p['extra_convs_6'])

  def message(self, receiver, sender):
    g = self.p['graph']['step']
    n, c, h, w = receiver.shape
    a = self.conv(receiver, g['extra_proja']).flatten(2)[0]   # [C/2, HW]
    b = self.conv(sender, g['extra_projb']).flatten(2)[0]
    weights = torch.softmax(a.T @ b, dim=1)                    # rows: receiver positions
    attended = (sender.flatten(2)[0] @ weights.T).view(1, c, h, w)
    return attended * torch.sigmoid(self.conv(attended, g['extra_gate']))

  def gru(self, m, state):
    g = self.p['graph']['step']['extra_ConvGRU']
    both = torch.cat([m, state], 1)
    z = torch.sigmoid(self.conv(both, g['update_gate']))
    r = torch.sigmoid(self.conv(both, g['reset_gate']))
    cand = torch.tanh(self.conv(torch.cat([m, state * r], 1), g['out_gate']))
    return state * (1 - z) + cand * z

  def adl(self, x, use_drop_mask):
    att = x.mean(1, keepdim=True)
    if use_drop_mask:
      s = (att < att.amax(dim=(2, 3), keepdim=True) * self.drop_th).float()
    else:
      s = torch.sigmoid(att)
    return (x * s + x) / 2

  def __call__(self, imgs, use_drop_mask):
    maps = [self.class_maps(img) for img in imgs]
    nodes = list(maps)
    for _ in range(self.steps):
      new = []
      for i in range(3):
        others = [j for j in range(3) if j != i]
        fused = self.conv(torch.cat([self.message(nodes[i], nodes[j]) for j in others], 1),
                          self.p['graph']['step']['extra_conv_fusion'])
        h = self.gru(fused, nodes[i])
        new.append(self.adl(h, use_drop_mask) if self.dropout else h)
      nodes = new
    gap = lambda x: x.mean(dim=(2, 3))
    return [gap(m) for m in maps], [gap(x) for x in nodes], maps, nodes


def o1_params(params, seed=0):
  """Weights at O(1) scale (He-like kernels, visible biases) so that differences show; drawn in
  numpy from the shapes alone (compiling flax's initialisers is slow on CPU)."""
  rs = np.random.RandomState(seed)

  def redraw(path, x):
    if path[-1].key == 'kernel':
      fan_in = int(np.prod(x.shape[:-1]))
      return jnp.asarray(rs.randn(*x.shape) * np.sqrt(2.0 / fan_in), jnp.float32)
    return jnp.asarray(rs.randn(*x.shape) * 0.1, jnp.float32)
  return jax.tree_util.tree_map_with_path(redraw, params)


def release_setup(graph_steps, importance_prob, dropout, groups, seed, params_seed):
  """The release variant at test width with O(1) weights, and a batch of groups of three."""
  cfg = config_lib.base_config().model
  cfg.variant, cfg.width, cfg.num_nodes, cfg.graph_steps = 'release', WIDTH, 3, graph_steps
  cfg.importance_prob, cfg.graph_dropout = importance_prob, dropout
  model = clf.build_classifier(cfg, L)
  rs = np.random.RandomState(seed)
  images = rs.rand(groups, 3, SIZE, SIZE, 3).astype(np.float32) * 2 - 1
  labels = (rs.rand(groups, 3, L) > 0.5).astype(np.float32)
  adjacency = np.ones((groups, 3, 3), bool)
  shapes = jax.eval_shape(lambda: model.init({'params': jax.random.PRNGKey(0)}, images, adjacency,
                                             False))
  return cfg, model, images, labels, adjacency, o1_params(shapes['params'], seed=params_seed)


@pytest.mark.parametrize('train,importance_prob,dropout', [
    (True, 0.0, True),    # the drop mask for every node and round
    (True, 1.0, True),    # the importance map for every node and round
    (False, 0.2, True),   # inference: the importance map
    (True, 0.2, False),   # graph dropout off
])
def test_release_forward_and_loss_match_torch(train, importance_prob, dropout):
  cfg, model, images, labels, adjacency, params = release_setup(
      graph_steps=3, importance_prob=importance_prob, dropout=dropout, groups=2, seed=1,
      params_seed=0)
  logits, out = jax.jit(lambda p: model.apply(
      {'params': p}, images, adjacency, train, rngs={'dropout': jax.random.PRNGKey(3)}))(params)
  loss, _ = clf.loss_fn(logits, out, labels, cfg)

  ref = TorchRelease(jax.tree_util.tree_map(np.asarray, params), 1.0 - importance_prob,
                     cfg.drop_threshold, 3, dropout)
  use_drop_mask = train and importance_prob == 0.0
  losses = []
  for b in range(2):
    with torch.no_grad():
      mids, graphs, maps, nodes = ref([t(images[b, i:i + 1]).permute(0, 3, 1, 2)
                                       for i in range(3)], use_drop_mask)
    nhwc = lambda x: x[0].permute(1, 2, 0).numpy()
    for i in range(3):
      np.testing.assert_allclose(out['cam_mid'][b, i], nhwc(maps[i]), rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(out['cam_graph'][b, i], nhwc(nodes[i]), rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(out['logits_mid'][b, i], mids[i][0].numpy(), rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(logits[b, i], graphs[i][0].numpy(), rtol=1e-5, atol=1e-5)
    lab = [t(labels[b, i:i + 1]) for i in range(3)]
    losses.append(((0.4 * sum(F.multilabel_soft_margin_loss(mids[i], lab[i]) for i in range(3))
                    + sum(F.multilabel_soft_margin_loss(graphs[i], lab[i]) for i in range(3)))
                   / 6).item())
  np.testing.assert_allclose(loss, np.mean(losses), rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(out['cam_graph']) - np.asarray(out['cam_mid'])).max() > 1e-2


def test_release_drop_branch_frequency_and_one_draw_per_node():
  """The release's drop mask is taken with probability 1 - importance_prob (the release's
  --drop_rate), drawn per node and round."""
  from gwsss_jax.models.graph import GraphConfig  # pylint: disable=g-import-not-at-top
  from gwsss_jax.models.release_graph import ReleaseGraph  # pylint: disable=g-import-not-at-top
  b, k = 300, 3
  x = jnp.asarray(np.random.RandomState(2).randn(b, k, 2, 2, 4).astype(np.float32))
  mod = ReleaseGraph(GraphConfig(graph_steps=1, importance_prob=0.2, drop_threshold=0.7))
  v = {'params': o1_params(jax.eval_shape(
      lambda: mod.init({'params': jax.random.PRNGKey(0)}, x, None, False))['params'])}
  key = {'dropout': jax.random.PRNGKey(4)}
  post, state = jax.jit(lambda v: mod.apply(v, x, None, True, rngs=key,
                                            capture_intermediates=True,
                                            mutable=['intermediates']))(v)
  post = np.asarray(post)
  pre = np.asarray(state['intermediates']['step']['extra_ConvGRU']['__call__'][0])
  o = pre.mean(-1, keepdims=True)
  drop = (pre * (o < o.max(axis=(2, 3), keepdims=True) * np.float32(0.7)) + pre) / 2
  imp = (pre / (1 + np.exp(-o)) + pre) / 2
  is_drop = np.all(np.abs(post - drop) < 1e-5, axis=(2, 3, 4))
  is_imp = np.all(np.abs(post - imp) < 1e-5, axis=(2, 3, 4))
  assert np.all(is_drop != is_imp)
  n = is_drop.size
  assert abs(is_drop.mean() - 0.8) < 4 * np.sqrt(0.8 * 0.2 / n)


def test_release_gradients_match_torch_autograd():
  """The training step's gradients (the max-pools' custom VJP and the graph's backward
  included) against torch autograd of the same loss, for every parameter."""
  # importance_prob 1: the importance map, so graph dropout is on and differentiable.
  cfg, model, images, labels, adjacency, params = release_setup(
      graph_steps=2, importance_prob=1.0, dropout=True, groups=1, seed=2, params_seed=1)

  def loss(p):
    logits, out = model.apply({'params': p}, images, adjacency, True,
                              rngs={'dropout': jax.random.PRNGKey(3)})
    return clf.loss_fn(logits, out, labels, cfg)[0]
  grads = jax.jit(jax.grad(loss))(params)

  ref = TorchRelease(jax.tree_util.tree_map(np.asarray, params), 0.0, cfg.drop_threshold, 2, True)
  mids, graphs, _, _ = ref([t(images[0, i:i + 1]).permute(0, 3, 1, 2) for i in range(3)], False)
  lab = [t(labels[0, i:i + 1]) for i in range(3)]
  torch_loss = (0.4 * sum(F.multilabel_soft_margin_loss(mids[i], lab[i]) for i in range(3))
                + sum(F.multilabel_soft_margin_loss(graphs[i], lab[i]) for i in range(3))) / 6
  torch_loss.backward()
  np.testing.assert_allclose(loss(params), torch_loss.item(), rtol=1e-5)
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  torch_leaves = jax.tree_util.tree_leaves(ref.p)
  assert len(flat) == len(torch_leaves)
  overall = max(float(leaf.grad.abs().max()) for leaf in torch_leaves)
  for (path, g), leaf in zip(flat, torch_leaves):
    # Per-leaf scale, floored: proj_b's bias shifts every softmax logit of a row equally, so
    # its true gradient is 0 and both frameworks return rounding noise (~1e-12).
    scale = max(float(leaf.grad.abs().max()), 1e-4 * overall)
    np.testing.assert_allclose(np.asarray(g), leaf.grad.numpy(), rtol=1e-3, atol=1e-4 * scale,
                               err_msg=jax.tree_util.keystr(path))


class TorchReleaseHead(torch.nn.Module):
  """The release's new layers (models/vgg_gnn.py CoattentionModel and models/ConvGRU.py) at
  `in_channels`, `hidden` and `classes`, initialised as its constructor does: every Conv2d
  weight N(0, 0.01), the biases left at PyTorch's default."""

  def __init__(self, in_channels, hidden, classes):
    super().__init__()
    conv = torch.nn.Conv2d
    self.extra_convs = torch.nn.Sequential(
        conv(in_channels, hidden, 3, padding=1), torch.nn.ReLU(True),
        conv(hidden, hidden, 3, padding=1), torch.nn.ReLU(True),
        conv(hidden, hidden, 3, padding=1), torch.nn.ReLU(True),
        conv(hidden, classes, 1))
    self.extra_gate = conv(classes, 1, 1, bias=False)
    self.extra_conv_fusion = conv(2 * classes, classes, 3, padding=1)
    self.extra_proja = conv(classes, classes // 2, 1)
    self.extra_projb = conv(classes, classes // 2, 1)
    self.gru = torch.nn.ModuleDict({g: conv(2 * classes, classes, 1)
                                    for g in ('reset_gate', 'update_gate', 'out_gate')})
    for m in self.modules():
      if isinstance(m, torch.nn.Conv2d):
        m.weight.data.normal_(0, 0.01)


def test_release_initialisation_matches_the_release():
  """The release variant's new layers: weights N(0, 0.01) and biases U(+-1/sqrt(fan_in)) as the
  release's torch modules get them (pooled over layers, scaled by torch's own bound)."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  from gwsss_jax.train import trainer  # pylint: disable=g-import-not-at-top
  cfg = config_lib.base_config().model
  cfg.variant, cfg.width, cfg.num_nodes = 'release', WIDTH, 3
  model = clf.build_classifier(cfg, L)
  images, adjacency = np.zeros((1, 3, SIZE, SIZE, 3), np.float32), np.ones((1, 3, 3), np.float32)
  params = trainer.run_init(lambda r: model.init(r, images, adjacency, False),
                            jax.random.key(0))['params']
  hidden = params['extra_convs_0']['kernel'].shape[-1]
  step = params['graph']['step']
  pairs = [(params[f'extra_convs_{i}'], f'extra_convs.{i}') for i in (0, 2, 4, 6)]
  pairs += [(step[n], n) for n in ('extra_gate', 'extra_conv_fusion', 'extra_proja',
                                   'extra_projb')]
  pairs += [(step['extra_ConvGRU'][g], f'gru.{g}')
            for g in ('reset_gate', 'update_gate', 'out_gate')]
  torch.manual_seed(0)
  heads = [TorchReleaseHead(hidden, hidden, L) for _ in range(20)]
  ours_scaled, theirs_scaled = [], []
  for layer, name in pairs:
    ref = [h.get_submodule(name) for h in heads]
    assert ref[0].weight.shape == tuple(np.transpose(layer['kernel'], (3, 2, 0, 1)).shape), name
    weights = np.asarray(layer['kernel']).reshape(-1)
    theirs = np.concatenate([r.weight.detach().numpy().reshape(-1) for r in ref])
    assert stats.ks_2samp(weights, theirs).pvalue > 1e-3, name
    assert ('bias' in layer) == (ref[0].bias is not None), name
    if 'bias' in layer:
      fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(ref[0].weight)  # pylint: disable=protected-access
      bound = 1 / np.sqrt(fan_in)
      ours_scaled.append(np.asarray(layer['bias']) / bound)
      theirs_scaled.append(np.concatenate([r.bias.detach().numpy() for r in ref]) / bound)
  ours_scaled, theirs_scaled = np.concatenate(ours_scaled), np.concatenate(theirs_scaled)
  assert np.abs(ours_scaled).max() <= 1 and np.abs(theirs_scaled).max() <= 1
  assert len(ours_scaled) > 100 and np.abs(ours_scaled).mean() > 0.3  # U(-1, 1): 0.5
  assert stats.ks_2samp(ours_scaled, theirs_scaled).pvalue > 1e-3
