"""The graph of the authors' public release (`model.variant='release'`), restated from its
models/vgg_gnn.py and models/ConvGRU.py so that users can compare it with the paper's equations
(graph.py). Weights N(0, 0.01), biases PyTorch's default, as the release initialises them.

Nodes are the L-channel class-score maps x_i [H, W, L] of the K images (C = L). One round:

  a_i = proj_a(x_i), b_j = proj_b(x_j)              1x1 convs C -> C/2 (with bias)
  A_ij = a_i b_j^T  [HW_i, HW_j], row softmax        co-attention, receiver i, sender j
  u_ji = softmax_r(A_ij) x_j                         the sender's unprojected map, attended
  g_ji = u_ji * sigmoid(gate(u_ji))                  gate: 1x1 conv C -> 1, no bias
  f_i  = fusion([g_{j1 i}, g_{j2 i}, ...])           3x3 conv (K-1)C -> C over the other nodes
                                                     in ascending index order (2C -> C at K=3)
  x_i  = ConvGRU(f_i, x_i)                           1x1 kernels, hidden state = the node map
  x_i  = (x_i * s + x_i) / 2                         graph dropout of the release (ADL-style)

Differences from the paper variant (all listed in docs/model.md and docs/release.md): no
self-edge; the messages are concatenated and fused instead of summed; every pair exchanges
messages whatever the labels (the adjacency input is ignored: the release samples partners that
share a class with the anchor and never masks); 1x1 ConvGRU kernels; the dropout output is
(x * s + x) / 2; the drop mask is binary. The branch is drawn as in the paper variant: the
importance map when r < `importance_prob` (delta_r). The release's ADL layer computes
floor(U + drop_rate) and takes the drop mask when it is 1, that is when U >= 1 - drop_rate, so
its `--drop_rate` is 1 - importance_prob: its default 0.8 takes the drop mask, not the importance
map, 80% of the time (configs/release.py: importance_prob 0.2). One draw per ADL call, and the
release calls it once per node per round.
Module names follow the release's attributes so that weights port one-to-one.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gwsss_jax.common.errors import UserError
from gwsss_jax.models.graph import NEW_LAYER_INIT, ConvGRUCell, channel_mean, drop_threshold_mask
from gwsss_jax.models.graph import GraphConfig, torch_default_bias
from gwsss_jax.models.graph import edge_embeddings, gated_fusion, neighbour_messages, other_nodes


def release_graph_dropout(x, r, importance_prob, drop_threshold):
  """The release's graph dropout: (x * s + x) / 2 with s chosen per node.

  s = sigmoid(o) (importance map) if r < importance_prob, else 1(o < max(o) * drop_threshold)
  (binary drop mask), o the channel mean. `r=None` (inference) takes the importance map: the
  drop mask erases the most activated regions, which inference must not do, although the
  release trains with it most of the time (and applies its random layer at test time too).

  Args:
    x: [B, K, H, W, C]; r: [B, K] uniform draws in [0, 1) or None.
  """
  o = channel_mean(x)
  importance = jax.nn.sigmoid(o)
  if r is None:
    s = importance
  else:
    s = jnp.where((r < importance_prob)[..., None, None], importance,
                  drop_threshold_mask(o, drop_threshold))
  return (x * s[..., None].astype(x.dtype) + x) / 2


class ReleaseGraphStep(nn.Module):
  """One round of the release's message passing (see the module docstring); of `graph` it reads
  the dropout keys only (the release has no reduction ratio, a 1x1 ConvGRU, the binary mask)."""
  graph: GraphConfig = GraphConfig()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    b, k, height, width, c = x.shape
    # The release's init: weights N(0, 0.01), biases PyTorch's default (fan_in = the input's
    # channels x kernel area: C for the 1x1 projections, (K-1) C x 9 for the fusion).
    conv = lambda features, kernel, name, use_bias=True, fan_in=c: nn.Conv(
        features, (kernel, kernel), padding='SAME', use_bias=use_bias, dtype=self.dtype,
        kernel_init=NEW_LAYER_INIT, bias_init=torch_default_bias(fan_in * kernel ** 2),
        name=name)
    # Only the K(K-1) pairs i != j: the release computes no self message. The co-attention is
    # the paper graph's Eqs. (5) and (7) with the C/2 projections (unprojected senders).
    others = other_nodes(k)                                     # [K, K-1] senders j != i
    a = conv(c // 2, 1, 'extra_proja')(x).reshape(b, k, height * width, -1)
    p = conv(c // 2, 1, 'extra_projb')(x).reshape(b, k, height * width, -1)
    attended = neighbour_messages(edge_embeddings(a, p, others),
                                  x.reshape(b, k, height * width, c), others)
    attended = attended.reshape(b, k, k - 1, height, width, c)
    fused = gated_fusion(attended, conv(1, 1, 'extra_gate', use_bias=False),
                         conv(c, 3, 'extra_conv_fusion', fan_in=(k - 1) * c))
    x = ConvGRUCell(c, 1, torch_bias=True, dtype=self.dtype, name='extra_ConvGRU')(fused, x)
    if self.graph.graph_dropout:
      r = jax.random.uniform(self.make_rng('dropout'), (b, k)) if train else None
      x = release_graph_dropout(x, r, self.graph.importance_prob, self.graph.drop_threshold)
    return x


class ReleaseGraph(nn.Module):
  """T rounds of the release's graph on class maps [B, K, H, W, L] -> [B, K, H, W, L].

  `adjacency` is accepted for the interface and ignored (all pairs exchange messages).
  """
  graph: GraphConfig = GraphConfig()  # T = graph.graph_steps
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, adjacency, train: bool):
    del adjacency
    if x.shape[1] < 2:
      raise UserError(f'model.num_nodes={x.shape[1]}: the release variant fuses the messages of '
                      'the other nodes and needs groups of 3 images')
    step = ReleaseGraphStep(self.graph, dtype=self.dtype, name='step')
    for _ in range(self.graph.graph_steps):
      x = step(x, train)
    return x
