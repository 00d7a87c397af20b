"""The paper's group-wise graph: co-attention edges, self-edges, ConvGRU updates, graph dropout.

Nodes are the K images of a group, batched as `h` of shape [B, K, H, W, C] (B groups). Every
operation is a batched einsum over the K(K-1) ordered node pairs i != j (the self-edge is its own
term); the adjacency matrix [B, K, K] is an input, so training passes the label graph (two
images are linked when they share a class) and inference may pass any graph. Notation follows
the paper (Methodology section):

  e_ij = h_i P Q^T h_j^T                      Eq. (5)  `edge_embeddings`
  e_ii = softmax(f(h_i) g(h_i)^T) h(h_i) + h_i Eq. (6)  `SelfEdge`
  m_ji = softmax_r(e_ij) h_j                  Eq. (7)  `neighbour_messages`
  m_i  = sum_{j in N_i} m_ji + m_ii           Eq. (8)  `aggregate_messages`
  h_i^t = ConvGRU(h_i^{t-1}, m_i^t)           Eq. (2)  `ConvGRUCell`
  s, h_hat = h * s                            Eqs. (10)-(11)  `graph_dropout`

Choices the paper leaves open, and what is done here:
- Eq. (5) is evaluated for every ordered pair (i, j), receiver i through P and sender j through
  Q. The paper's shortcut e_ji = e_ij^T holds only when P Q^T is symmetric; applying it would
  make the result depend on which node of a pair is called i, so the graph would not be
  equivariant to the order of the images in a group.
- f and g of Eq. (6) project to C/d channels (the reduction ratio of Eq. (5)), h keeps C.
- P, Q, f, g, h and the ConvGRU are shared by the T steps (the paper's W carries no t).
- Graph dropout acts on the state after every update, h^1 ... h^T, so the readout of Eq. (9)
  sees h_hat^T, as the authors' release does; h^0 (the intermediate readout) is not dropped.
- The drop branch of Eq. (10) multiplies by the binary mask 1(o < max(o) * delta_d), as ADL
  (Choe & Shim 2019, which the paper cites) and the release do (`drop_mask='binary'`). Eq. (10)
  as printed multiplies by o * 1(...) (`drop_mask='eq10'`): o is an unbounded channel mean, so
  the scale of a node's state then swings with the branch drawn at each of the T steps, and
  a network trained with it cannot even fit one fixed batch of the built-in dataset, while the
  binary mask can.

Four switches take out, one at a time, parts of this graph that the authors' release builds
otherwise (docs/model.md): `self_edge=False` (no Eq. (6) message), `edge_mask='all'` (messages
between every pair), `message_fusion='gated_conv'` (the release's gated, concatenated and
convolved messages, `GatedFusion`, instead of Eq. (8)'s sum), `drop_output='average'` (the
release's (h * s + h) / 2 instead of Eq. (11)'s h * s).
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# The authors' release initialises every new convolution's weights with N(0, 0.01)
# (models/vgg_gnn.py, the `m.weight.data.normal_(0, 0.01)` loop over its modules).
NEW_LAYER_INIT = nn.initializers.normal(stddev=0.01)


def torch_default_bias(fan_in: int):
  """PyTorch's default Conv2d bias initialiser, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in =
  input channels x kernel area: the release's init loop sets the weights only, so its biases
  keep this (the paper variant's biases start at zero)."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def other_nodes(k: int) -> np.ndarray:
  """[K, K-1] static indices: row i lists the nodes j != i in ascending order (the senders
  whose messages node i may receive; its own enters through the self-edge)."""
  return np.array([[j for j in range(k) if j != i] for i in range(k)], dtype=np.int32)


def _senders_or_all(senders, k: int) -> np.ndarray:
  """`senders`, or [K, K] with every node as a sender of every node (row i = 0 .. K-1)."""
  return np.tile(np.arange(k, dtype=np.int32), (k, 1)) if senders is None else senders


def edge_embeddings(p, q, senders=None):
  """Eq. (5): e_ij = (h_i P)(h_j Q)^T for every ordered node pair, or for i's `senders` only.

  Args:
    p: [B, K, N, c] the nodes projected by P (N = H * W positions, c = C / d).
    q: [B, K, N, c] the nodes projected by Q.
    senders: optional [K, S] static indices; row i names the S senders j scored against i
      (`other_nodes(K)`: every j != i, which skips the K diagonal pairs Eq. (8) masks anyway).
      None: every node, S = K.
  Returns:
    [B, K, S, N, N]: e[b, i, s, n, m] scores position n of node i against position m of node
    j = senders[i, s] (without `senders`, [B, K, K, N, N] with j = s).
  """
  senders = _senders_or_all(senders, q.shape[1])
  return jnp.einsum('bind,bismd->bisnm', p, q[:, senders])


def neighbour_messages(e, h, senders=None):
  """Eq. (7): m_ji = softmax_r(e_ij) h_j, for every ordered pair (receiver i, sender j).

  The row-wise softmax normalises over the sender's positions m; it runs in float32.

  Args:
    e: [B, K, S, N, N] edge embeddings (Eq. 5) for the same `senders`.
    h: [B, K, N, C] node states.
    senders: the `senders` that `e` was computed for (`edge_embeddings`); None: every node.
  Returns:
    [B, K, S, N, C]: out[b, i, s] is the message node senders[i, s] sends to node i.
  """
  attention = jax.nn.softmax(e.astype(jnp.float32), axis=-1).astype(h.dtype)
  senders = _senders_or_all(senders, h.shape[1])
  return jnp.einsum('bisnm,bismc->bisnc', attention, h[:, senders])


def aggregate_messages(messages, self_message, adjacency, senders=None):
  """Eq. (8): m_i = sum over neighbours j != i of m_ji, plus the self-edge message m_ii.

  Args:
    messages: [B, K, S, N, C] from `neighbour_messages` for the same `senders`.
    self_message: [B, K, N, C] the self-edge embedding e_ii (Eq. 6).
    adjacency: [B, K, K] (bool or 0/1); adjacency[b, i, j] links j to i. The diagonal is
      ignored: the self-edge always exists and enters once, through `self_message`.
    senders: the [K, S] senders of `messages`; None: every node.
  Returns:
    [B, K, N, C].
  """
  mask = sender_mask(adjacency, senders, messages.dtype)
  return jnp.einsum('bij,bijnc->binc', mask, messages) + self_message


def sender_mask(adjacency, senders=None, dtype=jnp.float32):
  """[B, K, S]: 1 where senders[i, s] is a neighbour j != i of node i (`adjacency[b, i, j]`),
  else 0 (the diagonal enters through the self-edge)."""
  k = adjacency.shape[-1]
  senders = _senders_or_all(senders, k)
  receivers = np.arange(k)[:, None]
  not_self = senders != receivers
  return adjacency[:, receivers, senders].astype(dtype) * not_self.astype(dtype)


def channel_mean(h):
  """o of Eq. (10): the mean over channels of [..., H, W, C], in float32."""
  return jnp.mean(h.astype(jnp.float32), axis=-1)


def drop_threshold_mask(o, delta_d):
  """1(o < max(o) * delta_d) of Eq. (10), the max taken over each map's H x W positions."""
  peak = jnp.max(o, axis=(-2, -1), keepdims=True)
  return (o < peak * delta_d).astype(o.dtype)


DROP_MASKS = ('binary', 'eq10')
EDGE_MASKS = ('labels', 'all')  # `model.edge_mask`
MESSAGE_FUSIONS = ('sum', 'gated_conv')  # `model.message_fusion`
DROP_OUTPUTS = ('eq11', 'average')  # `model.drop_output`


def graph_dropout_map(o, r, delta_r, delta_d, drop_mask: str = 'binary'):
  """Eq. (10): s = sigmoid(o) if r < delta_r, else the drop mask.

  The drop mask is 1(o < max(o) * delta_d) for `drop_mask='binary'` (ADL, the release) and
  o * 1(o < max(o) * delta_d) for 'eq10' (the equation as printed; module docstring).

  Args:
    o: [B, K, H, W] channel means of the node states.
    r: [B, K] uniform draws in [0, 1), one per node (and per step: a fresh r every call).
  Returns:
    [B, K, H, W] float32.
  """
  if drop_mask not in DROP_MASKS:
    raise ValueError(f'drop_mask={drop_mask!r}: choose from {DROP_MASKS}')
  importance = jax.nn.sigmoid(o)
  dropped = drop_threshold_mask(o, delta_d)
  if drop_mask == 'eq10':
    dropped = o * dropped
  return jnp.where((r < delta_r)[..., None, None], importance, dropped)


def graph_dropout(h, r, delta_r, delta_d, drop_mask: str = 'binary', output: str = 'eq11'):
  """Eqs. (10)-(11): h_hat = h (x) s, s broadcast over channels (`output='eq11'`), or the
  release's (h (x) s + h) / 2 (`output='average'`, an ablation: half of h always passes).

  `r=None` is inference: s = sigmoid(o), the importance map. In training that branch is taken
  with probability delta_r (0.8) and the drop mask is the regulariser (like dropout, it is off at
  inference). The importance map is kept because it is part of what the readout was trained on
  most of the time: with the identity instead, h^T would reach phi_r without the factor
  sigmoid(o) in (0, 1) it almost always carried in training, a shift of scale and shape.
  """
  if output not in DROP_OUTPUTS:
    raise ValueError(f'drop_output={output!r}: choose from {DROP_OUTPUTS}')
  o = channel_mean(h)
  s = jax.nn.sigmoid(o) if r is None else graph_dropout_map(o, r, delta_r, delta_d, drop_mask)
  dropped = h * s[..., None].astype(h.dtype)
  return dropped if output == 'eq11' else (dropped + h) / 2


class ConvGRUCell(nn.Module):
  """Eq. (2): the aggregation function, a convolutional GRU (Ballas et al. 2016).

    z = sigmoid(conv_z([m, h])),  r = sigmoid(conv_r([m, h]))
    h_new = (1 - z) * h + z * tanh(conv_o([m, r * h]))

  with m the aggregated message (input) and h the node state; [.,.] concatenates channels.
  Inputs are [..., H, W, C] with any leading axes. The convolution names are those of the
  authors' release (reset_gate, update_gate, out_gate) so that weights port one-to-one.
  """
  features: int
  kernel_size: int = 3
  torch_bias: bool = False  # biases as PyTorch's default (the release), else zero
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, message, state):
    lead = state.shape[:-3]
    message = message.reshape((-1,) + message.shape[-3:])
    state = state.reshape((-1,) + state.shape[-3:])
    fan_in = (message.shape[-1] + state.shape[-1]) * self.kernel_size ** 2
    bias_init = torch_default_bias(fan_in) if self.torch_bias else nn.initializers.zeros
    conv = lambda name: nn.Conv(self.features, (self.kernel_size, self.kernel_size),
                                padding='SAME', dtype=self.dtype, kernel_init=NEW_LAYER_INIT,
                                bias_init=bias_init, name=name)
    stacked = jnp.concatenate([message, state], axis=-1)
    update = nn.sigmoid(conv('update_gate')(stacked))
    reset = nn.sigmoid(conv('reset_gate')(stacked))
    candidate = jnp.tanh(conv('out_gate')(jnp.concatenate([message, state * reset], axis=-1)))
    new_state = state * (1 - update) + candidate * update
    return new_state.reshape(lead + new_state.shape[-3:])


class SelfEdge(nn.Module):
  """Eq. (6): e_ii = softmax(phi_f(h_i) phi_g(h_i)^T) phi_h(h_i) + h_i (self-attention).

  phi_f, phi_g, phi_h are 1x1 convolutions (Dense layers over channels); phi_f and phi_g map C to
  `reduced` channels, phi_h keeps C. The softmax (over the attended positions) runs in float32.
  Input and output: [B, K, N, C].
  """
  reduced: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h):
    dense = lambda features, name: nn.Dense(features, dtype=self.dtype,
                                            kernel_init=NEW_LAYER_INIT, name=name)
    f = dense(self.reduced, 'phi_f')(h)
    g = dense(self.reduced, 'phi_g')(h)
    v = dense(h.shape[-1], 'phi_h')(h)
    attention = jax.nn.softmax(jnp.einsum('bknd,bkmd->bknm', f, g).astype(jnp.float32), axis=-1)
    return jnp.einsum('bknm,bkmc->bknc', attention.astype(h.dtype), v) + h


def gated_fusion(messages, gate, fuse, mask=None):
  """The authors' release's combination of a node's incoming messages, shared by `GatedFusion`
  and the release variant's graph (which name and initialise their own layers): each message
  times sigmoid(gate(message)), optionally times `mask`, the S messages concatenated over
  channels in sender order and convolved by `fuse`.

  Args:
    messages: [B, K, S, H, W, C] (receiver, sender slot); gate: a layer C -> 1 on the last axis;
    fuse: a convolution S C -> C' on [B K, H, W, S C]; mask: None or [B, K, S].
  Returns:
    [B, K, H, W, C'].
  """
  b, k, s, height, width, c = messages.shape
  gated = messages * nn.sigmoid(gate(messages))
  if mask is not None:
    gated = gated * mask[..., None, None, None]
  fused = fuse(jnp.moveaxis(gated, 2, -2).reshape(b * k, height, width, s * c))
  return fused.reshape(b, k, height, width, fused.shape[-1])


class GatedFusion(nn.Module):
  """`message_fusion='gated_conv'`: the authors' release's way of combining a node's incoming
  messages (release_graph.py), in place of Eq. (8)'s sum. Each message m_ji is gated,
  g_ji = m_ji * sigmoid(w^T m_ji) (w: a 1x1 conv C -> 1, no bias), messages from non-neighbours
  are zeroed (the label mask), and the K - 1 gated messages, in ascending sender order, are
  concatenated over channels and fused by a 3x3 conv (K - 1) C -> C. The sum is symmetric in
  the senders; this is not (as in the release).
  Input [B, K, S, N, C] messages, [B, K, S] mask; output [B, K, N, C]."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, messages, mask, hw):
    b, k, s, n, c = messages.shape
    if s == 0:  # a single node: no incoming message
      return jnp.zeros((b, k, n, self.features), messages.dtype)
    gate = nn.Dense(1, use_bias=False, dtype=self.dtype, kernel_init=NEW_LAYER_INIT, name='gate')
    fuse = nn.Conv(self.features, (3, 3), padding='SAME', dtype=self.dtype,
                   kernel_init=NEW_LAYER_INIT, name='conv')
    fused = gated_fusion(messages.reshape(b, k, s, hw[0], hw[1], c), gate, fuse, mask)
    return fused.reshape(b, k, n, self.features)


@dataclasses.dataclass(frozen=True)
class GraphConfig:
  """The graph's hyper-parameters: the `config.model` keys of the same names (`from_config`),
  declared here once and passed whole to the graph modules of both variants."""
  graph_steps: int = 3          # T: message-passing rounds
  reduction: int = 4            # d of Eq. (5); P, Q, phi_f, phi_g project C to max(1, C // d)
  gru_kernel: int = 3           # ConvGRU kernel size (the paper variant; the release uses 1)
  graph_dropout: bool = True    # graph dropout (Eqs. 10-11) after every update
  importance_prob: float = 0.8  # delta_r of Eq. (10): P(importance map), else the drop mask
  drop_threshold: float = 0.7   # delta_d of Eq. (10)
  drop_mask: str = 'binary'     # the drop branch of Eq. (10): 'binary' or 'eq10'
  drop_output: str = 'eq11'     # Eq. (11)'s h * s, or 'average': the release's (h * s + h) / 2
  # Parts of the paper variant's graph that the release's builds otherwise, to replace one at a
  # time (drop_output above is another):
  self_edge: bool = True        # the self-edge message of Eq. (6) in Eq. (8)
  edge_mask: str = 'labels'     # Eq. (8)'s neighbours: images sharing a class, or 'all' pairs
  message_fusion: str = 'sum'   # Eq. (8)'s sum, or 'gated_conv': the release's gate and fusion

  @classmethod
  def from_config(cls, model_config) -> 'GraphConfig':
    """The graph of `config.model` (a ConfigDict, or any object with those attributes)."""
    return cls(**{f.name: getattr(model_config, f.name) for f in dataclasses.fields(cls)})


class GraphStep(nn.Module):
  """One message-passing round t: Eqs. (5)-(8), the ConvGRU of Eq. (2), graph dropout (10)-(11).

  Called T times on the same instance, so the T rounds share their weights; `graph.graph_steps`
  is not read here.
  """
  graph: GraphConfig = GraphConfig()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h, adjacency, train: bool):
    g = self.graph
    b, k, height, width, c = h.shape
    reduced = max(1, c // g.reduction)
    flat = h.reshape(b, k, height * width, c)
    dense = lambda name: nn.Dense(reduced, use_bias=False, dtype=self.dtype,
                                  kernel_init=NEW_LAYER_INIT, name=name)
    senders = other_nodes(k)  # the diagonal pairs would be masked out: not computed
    e = edge_embeddings(dense('edge_p')(flat), dense('edge_q')(flat), senders)
    if g.self_edge:
      self_message = SelfEdge(reduced, dtype=self.dtype, name='self_edge')(flat)
    else:
      self_message = jnp.zeros_like(flat)
    if g.edge_mask == 'all':
      adjacency = jnp.ones_like(adjacency)
    elif g.edge_mask not in EDGE_MASKS:
      raise ValueError(f'edge_mask={g.edge_mask!r}: choose from {EDGE_MASKS}')
    messages = neighbour_messages(e, flat, senders)
    if g.message_fusion == 'sum':
      message = aggregate_messages(messages, self_message, adjacency, senders)
    elif g.message_fusion == 'gated_conv':
      message = self_message + GatedFusion(c, dtype=self.dtype, name='fusion')(
          messages, sender_mask(adjacency, senders, messages.dtype), (height, width))
    else:
      raise ValueError(f'message_fusion={g.message_fusion!r}: choose from {MESSAGE_FUSIONS}')
    message = message.reshape(h.shape)
    h = ConvGRUCell(c, g.gru_kernel, dtype=self.dtype, name='gru')(message, h)
    if g.graph_dropout:
      r = jax.random.uniform(self.make_rng('dropout'), (b, k)) if train else None
      h = graph_dropout(h, r, g.importance_prob, g.drop_threshold, g.drop_mask, g.drop_output)
    return h


class GroupGraph(nn.Module):
  """T rounds of message passing over a batch of groups (the paper variant).

  An unrolled Python loop over the T rounds rather than `nn.scan`: on CPU the scan compiled a
  little faster but each step ran several times slower; compilation happens once, steps many
  times.

  Attributes: `graph` (T = `graph.graph_steps`) and the activations' `dtype`.
  """
  graph: GraphConfig = GraphConfig()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h, adjacency, train: bool):
    """h: [B, K, H, W, C] = h^0, adjacency: [B, K, K] -> h^T (after graph dropout)."""
    step = GraphStep(self.graph, dtype=self.dtype, name='step')
    for _ in range(self.graph.graph_steps):
      h = step(h, adjacency, train)
    return h


def label_adjacency(labels):
  """The paper's graph: [B, K, L] image labels -> [B, K, K] bool, True where two images share
  at least one class (the diagonal is True for any labelled image; the self-edge is implicit)."""
  labels = labels.astype(jnp.float32)
  return jnp.einsum('bil,bjl->bij', labels, labels) > 0
