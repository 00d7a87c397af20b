"""The group-wise classification network: backbone, graph, readouts, loss and CAMs.

`build_classifier(config.model, num_classes)` returns a `GroupClassifier`; its
`__call__(images [B, K, H, W, 3], adjacency [B, K, K], train)` returns `(logits, out)` with
`logits` [B, K, L] the graph readout and `out` the named intermediates (big_vision style):

  'logits_mid' [B, K, L]        the intermediate readout l^m on h^0
  'cam_graph'  [B, K, h, w, L]  the class maps of the graph readout, before GAP (float32)
  'cam_mid'    [B, K, h, w, L]  the class maps of the intermediate readout (float32)
  'h0', 'hT'   [B, K, h, w, C]  the node states before and after the graph (hT after dropout)

`train=True` turns graph dropout's random branch on; it draws from the `dropout` RNG stream
(`rngs={'dropout': key}`), and only then. ResNet BatchNorm statistics live in `batch_stats`.

Variants (`model.variant`):
- 'paper': backbone -> three 3x3 convs + ReLU (round(512 * width), round(512 * width),
  `model.node_dim` channels; C = node_dim, not scaled by the width) -> h^0. They start He-normal
  (`model.extra_conv_init='he'`) or as the release's (`'release'`, an ablation). The intermediate
  readout is a 1x1 class conv phi_m on h^0 followed by GAP; T rounds of `graph.GroupGraph` give
  h^T, and the graph readout is Eq. (9): GAP(phi_r(h^T)).
- 'release': backbone -> three 3x3 convs(round(512 * width)) + ReLU -> 1x1 conv to L class maps
  x^0 (the nodes, C = L) -> T rounds of `release_graph.ReleaseGraph` -> x^T. As in the release,
  logits_mid = GAP(x^0) (its per-image outputs x11, x22, x33), logits = GAP(x^T) (x1, x2, x3),
  cam_mid = x^0 (its `self.map`), cam_graph = x^T (its `self.map1`): there is no class conv
  after the graph, whose nodes already are class maps. New layers are initialised as the
  release does: weights N(0, 0.01), biases PyTorch's default U(+-1/sqrt(fan_in)).
  docs/release.md lists every difference between the variants and the release.

The backbone submodule is named `backbone`; every other parameter is a new layer. Activations
run in `model.dtype`; parameters, the class convolutions, logits, CAMs and the loss are float32.
"""

import dataclasses
from typing import Any, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from gwsss_jax.models.graph import NEW_LAYER_INIT, GraphConfig, GroupGraph, torch_default_bias

# The paper variant's three extra 3x3 convolutions continue the ReLU trunk: He initialisation
# (zero biases), so that the network also trains from scratch (the demo). The release variant
# keeps the release's N(0, 0.01) weights and PyTorch's default biases for them and for its class
# layer: that shrinks the signal ~100x over the three layers, which a pretrained backbone
# survives and a random one not.
TRUNK_INIT = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')
from gwsss_jax.models.release_graph import ReleaseGraph
from gwsss_jax.models.resnet import ResNet101
from gwsss_jax.models.vgg import VGG16, scaled

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# The keys of `config.model` that describe the network, recorded with a trained classifier
# (`gwsss_jax.train.artifact`) so that later stages rebuild it from the record; `num_nodes` is the
# group size its variables are initialised for.
# (`extra_conv_init` changes no shape; it is recorded with the rest as how the network began.)
ARCH_KEYS = ('variant', 'backbone', 'width', 'output_stride', 'freeze_bn', 'node_dim', 'num_nodes',
             'dtype', 'extra_conv_init') + tuple(f.name for f in dataclasses.fields(GraphConfig))
# Keys added to ARCH_KEYS after records were first written, with the value that describes what
# the code of a record without them built.
ARCH_KEYS_ADDED = {'self_edge': True, 'edge_mask': 'labels', 'message_fusion': 'sum',
                   'extra_conv_init': 'he', 'drop_output': 'eq11'}
EXTRA_CONV_INITS = ('he', 'release')  # `model.extra_conv_init`


class GroupClassifier(nn.Module):
  """See the module docstring. Attributes mirror the keys of `config.model`; the graph's are
  `graph` (`GraphConfig`)."""
  num_classes: int
  variant: str = 'paper'
  backbone_arch: str = 'vgg16'
  width: float = 1.0
  output_stride: int = 8
  freeze_bn: bool = True
  node_dim: int = 512
  extra_conv_init: str = 'he'
  graph: GraphConfig = GraphConfig()
  dtype: Any = jnp.float32

  def _features(self, x, train: bool):
    """The backbone on [N, H, W, 3] -> [N, h, w, channels]."""
    if self.backbone_arch == 'vgg16':
      return VGG16(width=self.width, dtype=self.dtype, name='backbone')(x)
    resnet = ResNet101(width=self.width, output_stride=self.output_stride,
                       freeze_bn=self.freeze_bn, dtype=self.dtype, name='backbone')
    return resnet(x, train)['layer4']

  def _conv(self, features, kernel, name, dtype=None, kernel_init=NEW_LAYER_INIT,
            bias_init=nn.initializers.zeros):
    return nn.Conv(features, (kernel, kernel), padding='SAME', dtype=dtype or self.dtype,
                   kernel_init=kernel_init, bias_init=bias_init, name=name)

  @nn.compact
  def __call__(self, images, adjacency, train: bool) -> Tuple[jax.Array, dict]:
    b, k = images.shape[:2]
    x = self._features(images.reshape((b * k,) + images.shape[2:]), train)
    hidden = scaled(512, self.width)
    if self.variant == 'paper':
      for i, features in enumerate((hidden, hidden, self.node_dim)):
        if self.extra_conv_init == 'he':
          inits = dict(kernel_init=TRUNK_INIT)
        elif self.extra_conv_init == 'release':
          inits = dict(bias_init=torch_default_bias(x.shape[-1] * 9))
        else:
          raise ValueError(f'extra_conv_init={self.extra_conv_init!r}: choose from '
                           f'{EXTRA_CONV_INITS}')
        x = nn.relu(self._conv(features, 3, f'extra_conv{i + 1}', **inits)(x))
      h0 = x.reshape((b, k) + x.shape[1:])
      h_final = GroupGraph(self.graph, dtype=self.dtype, name='graph')(h0, adjacency, train)
      cam_mid = self._conv(self.num_classes, 1, 'classifier_mid', jnp.float32)(h0)
      cam_graph = self._conv(self.num_classes, 1, 'classifier_graph', jnp.float32)(h_final)
    elif self.variant == 'release':
      for i in range(3):
        x = nn.relu(self._conv(hidden, 3, f'extra_convs_{2 * i}',
                               bias_init=torch_default_bias(x.shape[-1] * 9))(x))
      x = self._conv(self.num_classes, 1, 'extra_convs_6', jnp.float32,
                     bias_init=torch_default_bias(x.shape[-1]))(x)
      cam_mid = x.reshape((b, k) + x.shape[1:])
      h0 = cam_mid.astype(self.dtype)
      h_final = ReleaseGraph(self.graph, dtype=self.dtype, name='graph')(h0, adjacency, train)
      cam_graph = h_final.astype(jnp.float32)
    else:
      raise ValueError(f'unknown model.variant {self.variant!r}')
    out = {
        'logits_mid': jnp.mean(cam_mid, axis=(2, 3)),
        'cam_graph': cam_graph,
        'cam_mid': cam_mid,
        'h0': h0,
        'hT': h_final,
    }
    return jnp.mean(cam_graph, axis=(2, 3)), out


def build_classifier(model_config, num_classes: int) -> GroupClassifier:
  """The classifier described by `config.model` for `num_classes` (= config.data.num_classes)."""
  m = model_config
  return GroupClassifier(
      num_classes=num_classes, variant=m.variant, backbone_arch=m.backbone, width=m.width,
      output_stride=m.output_stride, freeze_bn=m.freeze_bn, node_dim=m.node_dim,
      extra_conv_init=m.extra_conv_init,
      graph=GraphConfig.from_config(m), dtype=DTYPES[m.dtype])


def multilabel_soft_margin(logits, labels):
  """Sigmoid cross entropy averaged over the L classes: [..., L] -> [...].

  The mean over classes is PyTorch's `multilabel_soft_margin_loss`, the release's loss; a sum
  would scale every gradient by L (20 on VOC) against the learning rates the paper reports.
  """
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32),
                                                     labels.astype(jnp.float32)), axis=-1)


def loss_fn(logits, out, labels, model_config) -> Tuple[jax.Array, dict]:
  """Eq. (12), averaged over the B * K images of the batch.

  paper:   L = CE(l^g) + lambda * CE(l^m)
  release: L = (lambda * sum_k CE(l^m_k) + sum_k CE(l^g_k)) / (2K) = (CE(l^g) + lambda CE(l^m)) / 2
           (the release's six-term average at K = 3)

  Args:
    logits: [B, K, L] graph readout; out: the classifier's dict (uses 'logits_mid');
    labels: [B, K, L] in {0, 1}; model_config: `config.model` (variant, loss_lambda).
  Returns:
    (scalar loss, {'loss_graph', 'loss_mid'}: the two cross entropies, each a mean over images).
  """
  loss_graph = jnp.mean(multilabel_soft_margin(logits, labels))
  loss_mid = jnp.mean(multilabel_soft_margin(out['logits_mid'], labels))
  loss = loss_graph + model_config.loss_lambda * loss_mid
  if model_config.variant == 'release':
    loss = loss / 2
  return loss, {'loss_graph': loss_graph, 'loss_mid': loss_mid}


def _select(maps, classes):
  if classes is None:
    return maps
  classes = jnp.asarray(classes)
  if classes.ndim == 1:
    return jnp.take(maps, classes, axis=-1)
  return jnp.take_along_axis(maps, classes[:, :, None, None, :], axis=-1)


def class_activation_maps(out: dict, input_hw: Sequence[int],
                          classes: Optional[Union[Sequence[int], jax.Array]] = None) -> dict:
  """The CAMs of both readouts and their self-ensemble, at feature and input resolution.

  Args:
    out: the classifier's dict ('cam_graph', 'cam_mid').
    input_hw: (H, W) to upsample to (bilinear, half-pixel centres as cv2/torch
      `align_corners=False`).
    classes: None for all L classes; [n] class indices for every image; or [B, K, n] per image.
  Returns:
    {'graph', 'intermediate', 'ensemble'}: [B, K, h, w, n] at feature resolution and
    {'graph_up', 'intermediate_up', 'ensemble_up'}: [B, K, H, W, n]; float32, raw scores
    (negatives kept: callers clip or normalise). 'ensemble' is the mean of the two maps.
  """
  graph = _select(out['cam_graph'], classes)
  intermediate = _select(out['cam_mid'], classes)
  maps = {'graph': graph, 'intermediate': intermediate, 'ensemble': (graph + intermediate) / 2}
  for name in list(maps):
    m = maps[name]
    maps[f'{name}_up'] = jax.image.resize(m, m.shape[:2] + tuple(input_hw) + m.shape[-1:],
                                          method='bilinear')
  return maps


def cams_for_export(out: dict, labels, readout: str = 'ensemble') -> jax.Array:
  """The OAA export maps of `readout`: [B, K, h, w, L] float32 in [0, 1] at feature resolution.

  The readout's map ('ensemble': the self-ensemble (graph + intermediate) / 2; 'graph';
  'intermediate') with negatives clipped to 0, divided by its maximum per image and class
  (+1e-8, so an all-zero map stays 0), as the release writes the ensemble (scaled to 0..255
  there). Classes absent from `labels` [B, K, L] are zeroed.
  """
  maps = {'graph': out['cam_graph'], 'intermediate': out['cam_mid']}
  cam = maps[readout] if readout in maps else (maps['graph'] + maps['intermediate']) / 2
  cam = jnp.maximum(cam, 0.0)
  cam = cam / (jnp.max(cam, axis=(2, 3), keepdims=True) + 1e-8)
  return cam * labels.astype(jnp.float32)[:, :, None, None, :]
