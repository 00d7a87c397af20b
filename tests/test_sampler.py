"""Group sampling: coverage, no repeats, maximal overlap against brute force, determinism."""

import numpy as np
import pytest

from gwsss_jax.common.errors import UserError
from gwsss_jax.data import sampler


def random_labels(rng, n, num_classes, p):
  return rng.random((n, num_classes)) < p


def brute_force_adjacency(labels, groups):
  k = groups.shape[1]
  out = np.zeros((len(groups), k, k), np.float32)
  for g, row in enumerate(groups):
    for a in range(k):
      for b in range(k):
        out[g, a, b] = float(a == b or bool(np.any(labels[row[a]] & labels[row[b]])))
  return out


@pytest.mark.parametrize('rule', ['greedy', 'release'])
def test_coverage_no_repeats_adjacency(rule):
  rng = np.random.default_rng(0)
  for trial in range(6):
    n, num_classes, k = 40 + 7 * trial, 3 + trial, 2 + trial % 4
    labels = random_labels(rng, n, num_classes, 0.25)
    groups, adjacency = sampler.make_groups(labels, k, seed=trial, epoch=0, rule=rule)
    assert groups.shape == (n, k) and groups.dtype == np.int32
    assert adjacency.shape == (n, k, k) and adjacency.dtype == np.float32
    np.testing.assert_array_equal(groups[:, 0], np.arange(n))  # every image anchors once
    assert all(len(set(row)) == k for row in groups.tolist())
    assert groups.min() >= 0 and groups.max() < n
    np.testing.assert_array_equal(adjacency, brute_force_adjacency(labels, groups))


def test_greedy_partners_have_maximal_overlap():
  rng = np.random.default_rng(1)
  for trial in range(20):
    n = int(rng.integers(6, 50))
    num_classes = int(rng.integers(1, 8))
    k = int(rng.integers(2, 6))
    labels = random_labels(rng, n, num_classes, rng.uniform(0.05, 0.6))
    groups, _ = sampler.make_groups(labels, k, seed=trial, epoch=3)
    overlap = labels.astype(int) @ labels.T.astype(int)
    for i in range(n):
      best = np.sort(np.delete(overlap[i], i))[::-1][:k - 1]
      got = np.sort(overlap[i, groups[i, 1:]])[::-1]
      np.testing.assert_array_equal(got, best, err_msg=f'trial {trial} anchor {i}')


def test_fallback_when_nothing_is_shared():
  labels = np.zeros((6, 3), bool)
  labels[0, 0] = True          # class 0: only image 0
  labels[1:4, 1] = True        # class 1: images 1-3
  labels[5, 2] = True          # image 4 has no label
  for rule in ('greedy', 'release'):
    groups, adjacency = sampler.make_groups(labels, 3, seed=0, epoch=0, rule=rule)
    assert len(set(groups[0])) == 3
    np.testing.assert_array_equal(adjacency[0], np.eye(3))  # fallback partners: no edge
    assert adjacency[4, 0, 1:].sum() == 0
    if rule == 'greedy':
      assert set(groups[1, 1:]) == {2, 3}  # image 1's partners share class 1


def test_deterministic_and_seed_dependent_tie_break():
  labels = np.zeros((200, 2), bool)
  labels[:, 0] = True  # all tie: partners are pure tie-break
  runs = {}
  for rule in ('greedy', 'release'):
    a, _ = sampler.make_groups(labels, 4, seed=5, epoch=2, rule=rule)
    b, _ = sampler.make_groups(labels, 4, seed=5, epoch=2, rule=rule)
    np.testing.assert_array_equal(a, b)
    c, _ = sampler.make_groups(labels, 4, seed=6, epoch=2, rule=rule)
    d, _ = sampler.make_groups(labels, 4, seed=5, epoch=3, rule=rule)
    assert (a[:, 1:] != c[:, 1:]).mean() > 0.9
    assert (a[:, 1:] != d[:, 1:]).mean() > 0.9
    runs[rule] = a
  # Uniform tie-break: every image is a partner about 3 times (chi-square-like bound).
  uses = np.bincount(runs['greedy'][:, 1:].reshape(-1), minlength=200)
  assert uses.max() < 15 and (uses == 0).mean() < 0.2


def test_release_rule_prefers_identical_label_vectors():
  labels = np.zeros((30, 4), bool)
  labels[:10, [0, 1]] = True   # 10 identical vectors {0, 1}
  labels[10:30, 1] = True      # 20 images sharing class 1 only
  groups, adjacency = sampler.make_groups(labels, 3, seed=0, epoch=0, rule='release')
  # With N=30, 1000 random draws always find an identical vector when one remains.
  assert np.isin(groups[:10, 1:], np.arange(10)).all()
  assert adjacency[:, 0, 1:].min() == 1.0


def test_single_node_groups():
  labels = np.eye(5, dtype=bool)
  groups, adjacency = sampler.make_groups(labels, 1, seed=0, epoch=0)
  np.testing.assert_array_equal(groups, np.arange(5)[:, None])
  np.testing.assert_array_equal(adjacency, np.ones((5, 1, 1)))


def test_too_few_images_and_bad_rule():
  with pytest.raises(UserError, match='model.num_nodes'):
    sampler.make_groups(np.ones((3, 2), bool), 4, seed=0, epoch=0)
  with pytest.raises(UserError, match='train.group_rule'):
    sampler.make_groups(np.ones((5, 2), bool), 2, seed=0, epoch=0, rule='random')


def brute_force_structure(labels, need):
  """Distinct vectors, their image counts, levels and candidate pairs by plain loops."""
  rows = [tuple(bool(x) for x in row) for row in labels]
  distinct = sorted(set(rows))  # tuples of bools sort lexicographically, False < True
  counts = [rows.count(vec) for vec in distinct]
  levels, pairs = [], []
  for r, vec in enumerate(distinct):
    overlaps = [sum(a and b for a, b in zip(vec, other)) for other in distinct]
    level = sum(vec)
    while sum(c for o, c in zip(overlaps, counts) if o >= level) - 1 < need:
      level -= 1  # the anchor itself is not a partner
    levels.append(level)
    pairs += [(r, v, o) for v, o in enumerate(overlaps) if o >= level]
  return distinct, counts, levels, pairs


@pytest.mark.parametrize('path', ['index', 'matmul', 'small_chunks'])
def test_greedy_structure_against_brute_force(monkeypatch, path):
  if path == 'matmul':  # every vector through the dense fallback
    monkeypatch.setattr(sampler, '_INDEX_BUDGET', 0)
  elif path == 'small_chunks':  # tiny budgets: chunked, mixed index and matmul rows
    monkeypatch.setattr(sampler, '_CHUNK', 5)
    monkeypatch.setattr(sampler, '_QUERY_BUDGET', 3)
    monkeypatch.setattr(sampler, '_MIN_HEAVY', 4)
  rng = np.random.default_rng(11)
  for trial in range(12):
    n = int(rng.integers(5, 60))
    num_classes = [3, 7, 12, 70][trial % 4]  # 70: label rows wider than one 64-bit word
    labels = random_labels(rng, n, num_classes, rng.uniform(0.02, 0.5))
    labels = labels[rng.integers(0, n, n)]  # repeated label vectors
    labels[0] = False  # an image without labels
    if num_classes > 64:  # pairs of rows that can differ only in the second word
      labels[1::2, :64] = labels[0::2][:n // 2, :64]
    need = int(rng.integers(1, min(n, 6)))
    distinct, counts, levels, pairs = brute_force_structure(labels, need)
    uniq, inverse, got_counts, order, start, pos = sampler._unique_vectors(labels)
    np.testing.assert_array_equal(uniq, np.array(distinct, bool).reshape(-1, num_classes))
    np.testing.assert_array_equal(got_counts, counts)
    for i in range(n):
      assert distinct[inverse[i]] == tuple(labels[i].tolist())
      assert order[start[inverse[i]] + pos[i]] == i
    level, pr, pv, ov = sampler._greedy_structure(uniq, got_counts, need)
    np.testing.assert_array_equal(level, levels, err_msg=f'trial {trial}')
    np.testing.assert_array_equal(np.stack([pr, pv, ov], 1), np.array(pairs).reshape(-1, 3),
                                  err_msg=f'trial {trial}')


def test_unlabelled_images_still_form_groups_of_distinct_images():
  # A split where no image has a class (every partner comes from the "any free image" step):
  # both rules give K distinct images per group, and no edges besides the self-edges.
  labels = np.zeros((7, 4), bool)
  for rule in ('greedy', 'release'):
    groups, adjacency = sampler.make_groups(labels, 3, seed=0, epoch=1, rule=rule)
    assert groups.shape == (7, 3) and list(groups[:, 0]) == list(range(7))
    assert all(len(set(g)) == 3 for g in groups.tolist()), rule
    np.testing.assert_array_equal(adjacency, np.broadcast_to(np.eye(3), (7, 3, 3)))
