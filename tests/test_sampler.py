"""Group sampling: coverage, no repeats, maximal overlap against brute force, determinism, and
the release's rule against a re-statement of its loader."""

import random

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


@pytest.mark.parametrize('rule', ['greedy', 'release', 'balanced'])
def test_coverage_no_repeats_adjacency(rule):
  rng = np.random.default_rng(0)
  for trial in range(6):
    n, num_classes, k = 40 + 7 * trial, 3 + trial, 2 + trial % 4
    labels = random_labels(rng, n, num_classes, 0.25)
    groups, adjacency = sampler.make_groups(labels, k, seed=trial, epoch=0, rule=rule)
    assert groups.shape == (n, k) and groups.dtype == np.int32
    assert adjacency.shape == (n, k, k) and adjacency.dtype == np.float32
    np.testing.assert_array_equal(groups[:, 0], np.arange(n))  # every image anchors once
    if rule != 'release':  # the release's partners may repeat
      assert all(len(set(row)) == k for row in groups.tolist())
    assert groups.min() >= 0 and groups.max() < n
    np.testing.assert_array_equal(adjacency, brute_force_adjacency(labels, groups))


@pytest.mark.parametrize('rule', ['greedy', 'balanced'])
def test_greedy_partners_have_maximal_overlap(rule):
  rng = np.random.default_rng(1)
  for trial in range(20):
    n = int(rng.integers(6, 50))
    num_classes = int(rng.integers(1, 8))
    k = int(rng.integers(2, 6))
    labels = random_labels(rng, n, num_classes, rng.uniform(0.05, 0.6))
    groups, _ = sampler.make_groups(labels, k, seed=trial, epoch=3, rule=rule)
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
    assert len(set(groups[0])) == 3 or rule == 'release'
    assert adjacency[0, 0, 1:].sum() == 0  # fallback partners: no edge
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


def test_balanced_rule_spreads_the_partners_evenly(monkeypatch):
  """The greedy rule's overlaps (test above), but the least used candidates first: with one
  class per image and at least K images per class every image appears K - 1 to K + 1 times an
  epoch (the greedy rule's uniform draws spread them over 4 or more counts); with images of two
  classes, which are candidates of more anchors, the spread is far smaller than the greedy's."""
  rng = np.random.default_rng(3)
  one_class = np.eye(5, dtype=bool)[rng.integers(0, 5, 100)]
  assert np.bincount(one_class.argmax(1)).min() >= 4
  for epoch in range(3):
    groups, _ = sampler.make_groups(one_class, 4, seed=1, epoch=epoch, rule='balanced')
    uses = np.bincount(groups.ravel(), minlength=100)
    assert uses.min() >= 3 and uses.max() <= 5, np.bincount(uses)
  greedy, _ = sampler.make_groups(one_class, 4, seed=1, epoch=0, rule='greedy')
  assert np.ptp(np.bincount(greedy.ravel(), minlength=100)) >= 4
  mixed = one_class.copy()
  mixed[:20, 0] = True  # 20 images of two classes (or of class 0 alone)
  spread = {}
  for rule in ('greedy', 'balanced'):
    uses = sum(np.bincount(sampler.make_groups(mixed, 3, seed=2, epoch=e, rule=rule)[0].ravel(),
                           minlength=100) for e in range(4))
    spread[rule] = uses.std()
  assert spread['balanced'] < 0.5 * spread['greedy'], spread
  a, _ = sampler.make_groups(mixed, 3, seed=2, epoch=1, rule='balanced')
  b, _ = sampler.make_groups(mixed, 3, seed=2, epoch=1, rule='balanced')
  c, _ = sampler.make_groups(mixed, 3, seed=3, epoch=1, rule='balanced')
  np.testing.assert_array_equal(a, b)
  assert (a[:, 1:] != c[:, 1:]).any()
  monkeypatch.setattr(sampler, '_BALANCED_BUDGET', 10)
  with pytest.raises(UserError, match="train.group_rule='balanced'"):
    sampler.make_groups(mixed, 3, seed=2, epoch=9, rule='balanced')


def test_release_rule_prefers_identical_label_vectors():
  labels = np.zeros((30, 4), bool)
  labels[:10, [0, 1]] = True   # 10 identical vectors {0, 1}
  labels[10:30, 1] = True      # 20 images sharing class 1 only
  groups, adjacency = sampler.make_groups(labels, 3, seed=0, epoch=0, rule='release')
  # With N=30, 1000 random draws always find an identical vector (images 1 .. 28).
  assert np.isin(groups[:10, 1:], np.arange(1, 10)).all()
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
  groups, adjacency = sampler.make_groups(labels, 3, seed=0, epoch=1, rule='greedy')
  assert groups.shape == (7, 3) and list(groups[:, 0]) == list(range(7))
  assert all(len(set(g)) == 3 for g in groups.tolist())
  np.testing.assert_array_equal(adjacency, np.broadcast_to(np.eye(3), (7, 3, 3)))
  # The release would fail on an anchor without a class; here it takes images 1 .. N-2.
  groups, _ = sampler.make_groups(labels, 3, seed=0, epoch=1, rule='release')
  assert groups[:, 1:].min() >= 1 and groups[:, 1:].max() <= 5


def release_loader_partners(label_list, idx, thres=1000):
  """The release's VOCDataset.__getitem__ partner loop, restated (utils/LoadData.py): returns
  the two partners' list indices of anchor `idx` (np.random and random as it uses them)."""
  label = label_list[idx]
  flag = np.where(label == 1)[0]
  random.shuffle(flag)
  flag = flag[0]
  partners = []
  for _ in range(2):
    t = 0
    while True:
      j = np.random.randint(1, len(label_list) - 1)
      t = t + 1
      if (label == label_list[j]).all():
        partners.append(j)
        break
      if t > thres:
        if label_list[j][flag] == 1:
          partners.append(j)
          break
  return partners


def release_law(labels, anchor, draws=1000):
  """The exact law of one partner slot of the release's loop, and of a pair of slots given the
  class f: [N] and [N, N] probabilities. Pool 1 .. N-2; an identical vector within `draws`
  draws, else (from draw 1001 on, identical or not) an image with class f."""
  n = len(labels)
  pool = np.zeros(n, bool)
  pool[1:n - 1] = True
  ident = pool & (labels == labels[anchor]).all(1)
  p_hit = 1 - (1 - ident.sum() / pool.sum()) ** draws
  single, joint = np.zeros(n), np.zeros((n, n))
  flags = np.flatnonzero(labels[anchor])
  for f in flags:
    with_f = pool & labels[:, f]
    slot = (p_hit * ident / max(ident.sum(), 1)) + (1 - p_hit) * with_f / with_f.sum()
    single += slot / len(flags)
    joint += np.outer(slot, slot) / len(flags)
  return single, joint


def test_release_rule_distribution_matches_its_loader():
  """On a fixed label set: each anchor's partner law (one slot, and two slots jointly: they
  share the class f) of make_groups and of the release's own loop, against the exact law."""
  classes = [{0}, {0}, {0, 1}, {1}, {1, 2}, {2}, {0}, {3}, {2, 3}, {0, 1}, {1}, {1, 3}]
  n = len(classes)
  labels = np.zeros((n, 4), bool)
  for i, c in enumerate(classes):
    labels[i, list(c)] = True
  laws = [release_law(labels, a) for a in range(n)]
  runs = 3000
  ours = np.stack([sampler.make_groups(labels, 3, seed=0, epoch=e, rule='release')[0]
                   for e in range(runs)])                                    # [runs, N, 3]
  np.random.seed(0)
  random.seed(0)
  label_list = labels.astype(np.float32)
  theirs = np.array([[[a] + release_loader_partners(label_list, a) for a in range(n)]
                     for _ in range(400)])
  for a in range(n):
    single, joint = laws[a]
    for got, tol in ((ours, 0.04), (theirs, 0.1)):  # ~3 and ~4 standard errors
      freq = np.bincount(got[:, a, 1:].reshape(-1), minlength=n) / got[:, a, 1:].size
      assert 0.5 * np.abs(freq - single).sum() < tol, (a, freq, single)
      assert (freq[single == 0] == 0).all(), a
    pair = np.zeros((n, n))
    np.add.at(pair, (ours[:, a, 1], ours[:, a, 2]), 1.0 / runs)
    assert 0.5 * np.abs(pair - joint).sum() < 0.08, a
    assert (pair[joint == 0] == 0).all(), a
  # The pool excludes the first and last image; anchor 4's vector is unique in the pool, so it
  # is its own partner; anchor 11's vector is outside it: the fallback on one class f, the
  # same for both slots (never one partner with class 1 only and one with class 3 only).
  assert laws[4][0][4] == 1.0 and laws[0][0][0] == laws[0][0][n - 1] == 0
  assert laws[11][1][3, 7] == 0 and laws[11][0][3] > 0 and laws[11][0][7] > 0


def test_release_rule_hit_probability_of_1000_draws():
  """With c identical images among N-2 = 2000, a slot finds one with 1 - (1 - c/2000)^1000 (the
  anchor counts: the earlier re-statement, c - 1 among N - 1, gives 0.70 here instead of 0.82)."""
  n = 2002
  labels = np.zeros((n, 2), bool)
  labels[:, 0] = True
  labels[[5, 6], 1] = True  # c = 2 for anchors 5 and 6: p = 0.632
  p = 1 - (1 - 2 / 2000) ** 1000
  # A miss falls back to class 0 (any image) or class 1 (images 5, 6) with probability 1/2 each.
  want = p + (1 - p) * (0.5 + 0.5 * 2 / 2000)
  got = np.mean([np.isin(sampler.make_groups(labels, 3, seed=1, epoch=e, rule='release')[0][
      [5, 6], 1:], [5, 6]).mean() for e in range(200)])
  assert abs(got - want) < 0.05, (got, want)  # 800 draws: sd ~0.014
  np.random.seed(1)
  random.seed(1)
  label_list = labels.astype(np.float32)
  theirs = np.mean([np.isin(release_loader_partners(label_list, a), [5, 6]).mean()
                    for _ in range(100) for a in (5, 6)])
  assert abs(theirs - want) < 0.08, (theirs, want)  # 400 draws: sd ~0.02
