"""The paper's graph (gwsss_jax/models/graph.py) against direct numpy re-statements of
Eqs. (2), (5)-(8), (10)-(11), plus equivariance, isolation and graph-dropout statistics."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gwsss_jax.models import graph as G

RTOL, ATOL = 1e-4, 1e-5


def rand(*shape, seed=0):
  return np.random.RandomState(seed).randn(*shape).astype(np.float32)


# ---- independent numpy re-statements --------------------------------------------------------

def np_softmax(x, axis=-1):
  x = x - x.max(axis=axis, keepdims=True)
  e = np.exp(x)
  return e / e.sum(axis=axis, keepdims=True)


def np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def np_conv_same(x, kernel, bias):
  """x [N, H, W, I], kernel [k, k, I, O]: stride 1, zero 'same' padding, by explicit offsets."""
  k = kernel.shape[0]
  pad = k // 2
  n, h, w, _ = x.shape
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  y = np.zeros((n, h, w, kernel.shape[-1]), np.float64)
  for dy in range(k):
    for dx in range(k):
      y += xp[:, dy:dy + h, dx:dx + w, :] @ kernel[dy, dx]
  return y + bias


def np_gru(m, h, p):
  """Eq. (2), ConvGRU (Ballas et al.): m, h [N, H, W, C]."""
  conv = lambda name, x: np_conv_same(x, p[name]['kernel'], p[name]['bias'])
  mh = np.concatenate([m, h], -1)
  z = np_sigmoid(conv('update_gate', mh))
  r = np_sigmoid(conv('reset_gate', mh))
  cand = np.tanh(conv('out_gate', np.concatenate([m, r * h], -1)))
  return (1 - z) * h + z * cand


def np_self_edge(x, p):
  """Eq. (6) for one node x [N, C]."""
  lin = lambda name: x @ p[name]['kernel'] + p[name]['bias']
  return np_softmax(lin('phi_f') @ lin('phi_g').T) @ lin('phi_h') + x


def np_dropout(h, r, delta_r, delta_d, drop_mask='binary', output='eq11'):
  """Eqs. (10)-(11) for one node h [H, W, C]; r None = inference (importance map).
  output='average': (h * s + h) / 2."""
  o = h.mean(-1)
  if r is None or r < delta_r:
    s = np_sigmoid(o)
  else:
    s = (o < o.max() * delta_d).astype(o.dtype)
    if drop_mask == 'eq10':
      s = o * s
  return h * s[..., None] if output == 'eq11' else (h * s[..., None] + h) / 2


def np_graph(h, adj, p, steps, delta_r=0.8, delta_d=0.7, r=None, self_edge=True, fusion='sum',
             drop_output='eq11'):
  """T rounds of the paper's graph with loops over nodes and pairs. h [B, K, H, W, C].

  fusion='gated_conv': each neighbour's message times sigmoid(its 1x1 gate), non-neighbours'
  messages zero, the K - 1 of them concatenated in ascending order and 3x3-convolved."""
  b, k, hh, ww, c = h.shape
  h = h.astype(np.float64)
  for t in range(steps):
    new = np.zeros_like(h)
    for bi in range(b):
      flat = h[bi].reshape(k, hh * ww, c)
      for i in range(k):
        msg = np_self_edge(flat[i], p['self_edge']) if self_edge else np.zeros_like(flat[i])
        incoming = []
        for j in range(k):
          if j == i:
            continue
          e = flat[i] @ p['edge_p']['kernel'] @ p['edge_q']['kernel'].T @ flat[j].T
          m_ji = np_softmax(e, axis=1) @ flat[j]
          if fusion == 'sum':
            if adj[bi, i, j]:
              msg = msg + m_ji
          else:
            gated = m_ji * np_sigmoid(m_ji @ p['fusion']['gate']['kernel'])
            incoming.append(gated * float(adj[bi, i, j]))
        if incoming:
          stacked = np.concatenate(incoming, -1).reshape(1, hh, ww, -1)
          conv = p['fusion']['conv']
          msg = msg + np_conv_same(stacked, conv['kernel'], conv['bias']).reshape(hh * ww, c)
        new[bi, i] = np_gru(msg.reshape(1, hh, ww, c), h[bi, i][None], p['gru'])[0]
        if r is not False:
          draw = None if r is None else r[t][bi, i]
          new[bi, i] = np_dropout(new[bi, i], draw, delta_r, delta_d, output=drop_output)
    h = new
  return h


_JITTED = {}


def run(mod, v, h, adj, train, seed=0):
  """mod.apply under jit, compiled once per module and mode."""
  if (mod, train) not in _JITTED:
    _JITTED[mod, train] = jax.jit(
        lambda v, h, a, key: mod.apply(v, h, a, train, rngs={'dropout': key}))
  return np.asarray(_JITTED[mod, train](v, h, adj, jax.random.PRNGKey(seed)))


def random_variables(mod, *args, scale=0.3, seed=0):
  """Variables of `mod` with O(1) random weights (every term of every equation matters). The
  shapes come from `jax.eval_shape`, which avoids compiling the initialisers."""
  shapes = jax.eval_shape(lambda: mod.init({'params': jax.random.PRNGKey(0)}, *args))
  rs = np.random.RandomState(seed)
  return jax.tree_util.tree_map(lambda a: (rs.randn(*a.shape) * scale).astype(np.float32), shapes)


def np_params(variables):
  return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), variables['params'])


# ---- single equations -----------------------------------------------------------------------

def test_eq5_edge_embeddings():
  h, p, q = rand(2, 3, 6, 8), rand(8, 2, seed=1), rand(8, 2, seed=2)
  e = np.asarray(G.edge_embeddings(jnp.asarray(h @ p), jnp.asarray(h @ q)))
  assert e.shape == (2, 3, 3, 6, 6)
  for b in range(2):
    for i in range(3):
      for j in range(3):
        want = h[b, i] @ (p @ q.T) @ h[b, j].T  # h_i P Q^T h_j^T
        np.testing.assert_allclose(e[b, i, j], want, rtol=RTOL, atol=ATOL)


def test_eq7_neighbour_messages():
  e, h = rand(2, 3, 3, 5, 5), rand(2, 3, 5, 4, seed=1)
  m = np.asarray(G.neighbour_messages(jnp.asarray(e), jnp.asarray(h)))
  for b in range(2):
    for i in range(3):
      for j in range(3):
        rows = np.exp(e[b, i, j]) / np.exp(e[b, i, j]).sum(1, keepdims=True)
        np.testing.assert_allclose(m[b, i, j], rows @ h[b, j], rtol=RTOL, atol=ATOL)


def test_eq8_aggregation_masks_non_neighbours_and_diagonal():
  msgs, own = rand(2, 4, 4, 5, 3), rand(2, 4, 5, 3, seed=1)
  adj = np.random.RandomState(2).rand(2, 4, 4) > 0.5
  out = np.asarray(G.aggregate_messages(jnp.asarray(msgs), jnp.asarray(own), jnp.asarray(adj)))
  for b in range(2):
    for i in range(4):
      want = own[b, i] + sum(msgs[b, i, j] for j in range(4) if j != i and adj[b, i, j])
      np.testing.assert_allclose(out[b, i], want, rtol=RTOL, atol=ATOL)


def test_eqs5_7_8_over_the_off_diagonal_senders():
  """The `senders=other_nodes(K)` path GraphStep takes: Eqs. (5), (7), (8) for the pairs j != i
  only, against the same numpy statements."""
  h, p, q = rand(2, 4, 5, 6), rand(6, 2, seed=1), rand(6, 2, seed=2)
  adj = np.random.RandomState(3).rand(2, 4, 4) > 0.5
  senders = G.other_nodes(4)
  assert senders.tolist() == [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]
  e = G.edge_embeddings(jnp.asarray(h @ p), jnp.asarray(h @ q), senders)
  m = G.neighbour_messages(e, jnp.asarray(h), senders)
  own = rand(2, 4, 5, 6, seed=4)
  out = np.asarray(G.aggregate_messages(m, jnp.asarray(own), jnp.asarray(adj), senders))
  assert e.shape == (2, 4, 3, 5, 5) and m.shape == (2, 4, 3, 5, 6)
  for b in range(2):
    for i in range(4):
      want_sum = own[b, i].copy()
      for s_, j in enumerate(senders[i]):
        e_ij = h[b, i] @ (p @ q.T) @ h[b, j].T
        np.testing.assert_allclose(e[b, i, s_], e_ij, rtol=RTOL, atol=ATOL)
        rows = np.exp(e_ij) / np.exp(e_ij).sum(1, keepdims=True)
        np.testing.assert_allclose(m[b, i, s_], rows @ h[b, j], rtol=RTOL, atol=ATOL)
        if adj[b, i, j]:
          want_sum += rows @ h[b, j]
      np.testing.assert_allclose(out[b, i], want_sum, rtol=RTOL, atol=ATOL)


def test_eq6_self_edge():
  x = rand(2, 3, 6, 8)
  mod = G.SelfEdge(reduced=2)
  v = random_variables(mod, x)
  p = np_params(v)
  out = np.asarray(jax.jit(mod.apply)(v, x))
  for b in range(2):
    for k in range(3):
      np.testing.assert_allclose(out[b, k], np_self_edge(x[b, k], p), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize('kernel', [1, 3])
def test_eq2_convgru(kernel):
  m, h = rand(2, 3, 5, 6, 4), rand(2, 3, 5, 6, 4, seed=1)
  cell = G.ConvGRUCell(features=4, kernel_size=kernel)
  v = random_variables(cell, m, h)
  p = np_params(v)
  out = np.asarray(jax.jit(cell.apply)(v, m, h))
  want = np_gru(m.reshape(6, 5, 6, 4), h.reshape(6, 5, 6, 4), p).reshape(out.shape)
  np.testing.assert_allclose(out, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize('drop_mask', G.DROP_MASKS)
@pytest.mark.parametrize('output', G.DROP_OUTPUTS)
def test_eq10_11_graph_dropout_both_branches(drop_mask, output):
  h = rand(2, 3, 5, 4, 6)
  r = np.array([[0.1, 0.79, 0.8], [0.95, 0.0, 0.5]], np.float32)
  out = np.asarray(G.graph_dropout(jnp.asarray(h), jnp.asarray(r), 0.8, 0.7, drop_mask, output))
  eval_out = np.asarray(G.graph_dropout(jnp.asarray(h), None, 0.8, 0.7, drop_mask, output))
  for b in range(2):
    for k in range(3):
      np.testing.assert_allclose(
          out[b, k], np_dropout(h[b, k], r[b, k], 0.8, 0.7, drop_mask, output),
          rtol=RTOL, atol=ATOL)
      np.testing.assert_allclose(eval_out[b, k], np_dropout(h[b, k], None, 0.8, 0.7, output=output),
                                 rtol=RTOL, atol=ATOL)


def test_eq10_mask_zeroes_exactly_positions_at_or_above_threshold():
  o = np.array([[[[1.0, 0.5], [0.49999997, -2.0]]]], np.float32)  # max 1, threshold 0.5
  # 'eq10': s = o * 1(o < 0.5); 'binary': s = 1(o < 0.5). The max and the value equal to the
  # threshold are zeroed.
  s = np.asarray(G.graph_dropout_map(jnp.asarray(o), jnp.ones((1, 1)), 0.8, 0.5, 'eq10'))
  np.testing.assert_array_equal(s, np.array([[[[0.0, 0.0], [0.49999997, -2.0]]]], np.float32))
  s = np.asarray(G.graph_dropout_map(jnp.asarray(o), jnp.ones((1, 1)), 0.8, 0.5))
  np.testing.assert_array_equal(s, np.array([[[[0.0, 0.0], [1.0, 1.0]]]], np.float32))
  o = rand(3, 4, 7, 7)
  thr = o.max(axis=(2, 3), keepdims=True) * np.float32(0.7)
  s = np.asarray(G.graph_dropout_map(jnp.asarray(o), jnp.ones((3, 4)), 0.8, 0.7, 'eq10'))
  assert np.all(s[o >= thr] == 0)
  np.testing.assert_array_equal(s[o < thr], o[o < thr])
  s = np.asarray(G.graph_dropout_map(jnp.asarray(o), jnp.ones((3, 4)), 0.8, 0.7, 'binary'))
  np.testing.assert_array_equal(s, (o < thr).astype(np.float32))
  with pytest.raises(ValueError, match='drop_mask'):
    G.graph_dropout_map(jnp.asarray(o), jnp.ones((3, 4)), 0.8, 0.7, 'soft')


# ---- the whole graph --------------------------------------------------------------------------

# Two groups of three: node 0 and node 2 of the first unlinked, node 0 of the second isolated.
ADJ = np.array([[[1, 1, 0], [1, 1, 1], [0, 1, 1]], [[1, 0, 0], [0, 1, 1], [0, 1, 1]]], bool)

def make_graph(h, adj, steps=2, **kw):
  mod = G.GroupGraph(G.GraphConfig(graph_steps=steps, reduction=2, **kw))
  return mod, random_variables(mod, h, adj, False)


def test_graph_matches_numpy_inference_and_drop_branch():
  h = np.abs(rand(2, 3, 3, 4, 4))
  adj = ADJ
  mod, v = make_graph(h, adj, steps=2, importance_prob=0.8, drop_threshold=0.7)
  p = np_params(v)['step']
  out = run(mod, v, h, adj, False)
  np.testing.assert_allclose(out, np_graph(h, adj, p, 2), rtol=1e-4, atol=1e-4)
  # importance_prob 0: the drop-mask branch for every node and step, whatever the draw.
  mod0, _ = make_graph(h, adj, steps=2, importance_prob=0.0, drop_threshold=0.7)
  out = run(mod0, v, h, adj, True, seed=1)
  always = [np.ones((2, 3))] * 2
  np.testing.assert_allclose(out, np_graph(h, adj, p, 2, 0.0, 0.7, r=always), rtol=1e-4, atol=1e-4)
  # Dropout off: the plain GRU states.
  mod_off, _ = make_graph(h, adj, steps=2, graph_dropout=False)
  out = run(mod_off, v, h, adj, True)
  np.testing.assert_allclose(out, np_graph(h, adj, p, 2, r=False), rtol=1e-4, atol=1e-4)


def test_graph_without_self_edge_or_label_mask_matches_numpy():
  """`self_edge=False` drops Eq. (6)'s message from Eq. (8); `edge_mask='all'` passes messages
  between every pair of the group, whatever their labels (the two ablation switches)."""
  h = np.abs(rand(2, 3, 3, 4, 4))
  adj = ADJ
  every = np.ones_like(adj)
  mod, v = make_graph(h, adj, steps=2, self_edge=False)
  assert 'self_edge' not in v['params']['step']
  p = np_params(v)['step']
  np.testing.assert_allclose(run(mod, v, h, adj, False),
                             np_graph(h, adj, p, 2, self_edge=False), rtol=1e-4, atol=1e-4)
  mod_all, v_all = make_graph(h, adj, steps=2, edge_mask='all')
  p_all = np_params(v_all)['step']
  out = run(mod_all, v_all, h, adj, False)
  np.testing.assert_allclose(out, np_graph(h, every, p_all, 2), rtol=1e-4, atol=1e-4)
  assert np.abs(out - np_graph(h, adj, p_all, 2)).max() > 1e-3  # the mask did matter here


def test_graph_with_gated_fusion_matches_numpy():
  """`message_fusion='gated_conv'`: the release's gate, concatenation and 3x3 fusion instead of
  Eq. (8)'s sum, non-neighbours' messages zeroed, the self-edge added."""
  h = np.abs(rand(2, 3, 3, 4, 4))
  adj = ADJ
  mod, v = make_graph(h, adj, steps=2, message_fusion='gated_conv')
  p = np_params(v)['step']
  assert p['fusion']['conv']['kernel'].shape == (3, 3, 2 * 4, 4)
  out = run(mod, v, h, adj, False)
  np.testing.assert_allclose(out, np_graph(h, adj, p, 2, fusion='gated_conv'), rtol=1e-4,
                             atol=1e-4)
  every = np.ones_like(adj)
  assert np.abs(out - np_graph(h, every, p, 2, fusion='gated_conv')).max() > 1e-3  # mask mattered
  # One node: no incoming message, no fusion parameters; the self-edge alone.
  one = h[:, :1]
  mod1, v1 = make_graph(one, adj[:, :1, :1], steps=2, message_fusion='gated_conv')
  assert 'fusion' not in v1['params']['step']
  np.testing.assert_allclose(run(mod1, v1, one, adj[:, :1, :1], False),
                             np_graph(one, adj[:, :1, :1], np_params(v1)['step'], 2),
                             rtol=1e-4, atol=1e-4)


def test_graph_with_averaged_dropout_output_matches_numpy():
  """`drop_output='average'`: every round ends with (h * s + h) / 2, the release's form, in both
  branches (the drop mask for every node with importance_prob 0)."""
  h = np.abs(rand(2, 3, 3, 4, 4))
  adj = ADJ
  mod, v = make_graph(h, adj, steps=2, drop_output='average')
  p = np_params(v)['step']
  out = run(mod, v, h, adj, False)
  np.testing.assert_allclose(out, np_graph(h, adj, p, 2, drop_output='average'), rtol=1e-4,
                             atol=1e-4)
  assert np.abs(out - np_graph(h, adj, p, 2)).max() > 1e-3  # differs from Eq. (11)'s h * s
  mod0, _ = make_graph(h, adj, steps=2, importance_prob=0.0, drop_output='average')
  always = [np.ones((2, 3))] * 2
  np.testing.assert_allclose(run(mod0, v, h, adj, True, seed=1),
                             np_graph(h, adj, p, 2, 0.0, r=always, drop_output='average'),
                             rtol=1e-4, atol=1e-4)


def test_single_node_uses_the_self_edge_only():
  h = np.abs(rand(2, 1, 3, 3, 4))
  adj = np.ones((2, 1, 1), bool)
  mod, v = make_graph(h, adj, steps=2)
  out = run(mod, v, h, adj, False)
  want = np_graph(h, adj, np_params(v)['step'], 2)
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)


def test_permutation_equivariance():
  h = rand(2, 4, 3, 3, 4)
  labels = np.random.RandomState(1).rand(2, 4, 5) > 0.6
  adj = np.asarray(G.label_adjacency(jnp.asarray(labels)))
  mod, v = make_graph(h, adj, steps=2)
  perm = np.array([2, 0, 3, 1])
  out = run(mod, v, h, adj, False)
  out_p = run(mod, v, h[:, perm], adj[:, perm][:, :, perm], False)
  np.testing.assert_allclose(out_p, out[:, perm], rtol=1e-5, atol=1e-5)


def test_label_adjacency_and_non_neighbour_isolation():
  # Images 0, 1 share class 0; images 2, 3 share class 3; no class across the two pairs.
  labels = np.array([[[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1]]], np.float32)
  adj = np.asarray(G.label_adjacency(jnp.asarray(labels)))
  np.testing.assert_array_equal(adj[0], [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]])
  h = rand(1, 4, 3, 3, 4)
  mod, v = make_graph(h, adj, steps=2)
  changed = h.copy()
  changed[:, 3] = rand(1, 3, 3, 4, seed=9)
  out = run(mod, v, h, adj, True, seed=5)
  out_c = run(mod, v, changed, adj, True, seed=5)
  np.testing.assert_array_equal(out_c[:, :2], out[:, :2])
  assert np.abs(out_c[:, 2] - out[:, 2]).max() > 1e-3  # the neighbour of 3 does change


# ---- graph dropout randomness -----------------------------------------------------------------

def branch_per_node(mod, v, h, adj, key):
  """For each step and node: True where the importance map was applied, from the captured GRU
  output (before dropout) and the step output (after)."""
  _, state = jax.jit(lambda v: mod.apply(v, h, adj, True, rngs={'dropout': key},
                                         capture_intermediates=True,
                                         mutable=['intermediates']))(v)
  inter = flax.core.unfreeze(state['intermediates'])['step']
  before, after = inter['gru']['__call__'], inter['__call__']
  branches = []
  for pre, post in zip(before, after):
    pre, post = np.asarray(pre), np.asarray(post)
    imp = pre * np_sigmoid(pre.mean(-1, keepdims=True))
    is_imp = np.all(np.abs(post - imp) < 1e-5, axis=(2, 3, 4))
    o = pre.mean(-1)
    drop = pre * (o < o.max(axis=(2, 3), keepdims=True) * np.float32(0.7))[..., None]
    is_drop = np.all(np.abs(post - drop) < 1e-5, axis=(2, 3, 4))
    assert np.all(is_imp != is_drop)  # every node took exactly one branch
    branches.append(is_imp)
  return np.stack(branches)


def test_graph_dropout_same_key_same_output_and_branch_frequency():
  b, k, steps = 250, 4, 2
  h = rand(b, k, 2, 2, 3)
  adj = np.ones((b, k, k), bool)
  mod, v = make_graph(h, adj, steps=steps, importance_prob=0.8, drop_threshold=0.7)
  a1, a2, a3 = (run(mod, v, h, adj, True, seed=s) for s in (7, 7, 8))
  np.testing.assert_array_equal(a1, a2)
  assert np.abs(a1 - a3).max() > 1e-4
  imp = branch_per_node(mod, v, h, adj, jax.random.PRNGKey(7))
  n = imp.size  # 2000 draws: per node and per step
  assert abs(imp.mean() - 0.8) < 4 * np.sqrt(0.8 * 0.2 / n)
  assert not np.array_equal(imp[0], imp[1])  # fresh draws at every step
