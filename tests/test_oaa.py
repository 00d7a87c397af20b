"""The OAA accumulation rule on hand-made maps, and the store's kill-and-resume behaviour."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from gwsss_jax.cams import oaa
from gwsss_jax.common.errors import UserError

LABELS = np.array([[1, 0, 1],
                   [0, 1, 0]], bool)


def _cams(values_by_class, hw=(2, 2), num_classes=3):
  """[1, h, w, L] with the given [h, w] maps at their classes."""
  out = np.zeros((1,) + hw + (num_classes,), np.float32)
  for c, v in values_by_class.items():
    out[0, ..., c] = v
  return out


def _probs(values_by_class, num_classes=3):
  p = np.zeros((1, num_classes), np.float32)
  for c, v in values_by_class.items():
    p[0, c] = v
  return p


def test_rule_on_hand_made_maps(tmp_path):
  store = oaa.OAAStore.open(str(tmp_path), LABELS, (2, 2), process_index=0)
  a = np.array([[1.0, 0.5], [0.0, 0.2]])
  b = np.array([[0.4, 1.0], [0.6, 0.0]])
  # Epoch 0: class 0 confident, class 2 below the threshold (skipped); class 1 is not a label
  # of image 0 and is ignored whatever its map.
  store.update([0], _cams({0: a, 1: b, 2: b}), _probs({0: 0.5, 1: 0.9, 2: 0.05}), 0.1, False)
  got = store.get(0)
  assert sorted(got) == [0]
  np.testing.assert_array_equal(got[0], [[255, 128], [0, 51]])  # rint(255 * a)
  # Epoch 1: the max across epochs.
  store.update([0], _cams({0: b, 2: a}), _probs({0: 0.2, 2: 0.09}), 0.1, False)
  np.testing.assert_array_equal(store.get(0)[0], [[255, 255], [153, 51]])
  assert 2 not in store.get(0)
  # Last epoch: class 2 still below the threshold but missing -> written; class 0 below the
  # threshold and present -> not overwritten.
  store.update([0], _cams({0: np.zeros((2, 2)), 2: b}), _probs({0: 0.01, 2: 0.01}), 0.1, True)
  got = store.get(0)
  np.testing.assert_array_equal(got[0], [[255, 255], [153, 51]])
  np.testing.assert_array_equal(got[2], [[102, 255], [153, 0]])
  # ... and once written, a second below-threshold map in the last epoch leaves it alone,
  # while a confident one still takes the max.
  store.update([0], _cams({2: a}), _probs({2: 0.01}), 0.1, True)
  np.testing.assert_array_equal(store.get(0)[2], [[102, 255], [153, 0]])
  store.update([0], _cams({2: a}), _probs({2: 0.5}), 0.1, True)
  np.testing.assert_array_equal(store.get(0)[2], [[255, 255], [153, 51]])
  assert store.get(1) == {}
  assert store.num_written() == 2


def test_non_finite_maps_never_enter_the_store(tmp_path):
  store = oaa.OAAStore.open(str(tmp_path), LABELS, (2, 2), process_index=0)
  a = np.array([[1.0, 0.5], [0.0, 0.2]])
  store.update([0], _cams({0: a}), _probs({0: 0.5}), 0.1, False)
  for bad in (np.nan, np.inf):
    store.update([0], _cams({0: np.full((2, 2), bad), 2: np.full((2, 2), bad)}),
                 _probs({0: 0.5, 2: 0.5}), 0.1, True)
    store.update([0], _cams({0: a, 2: a}), _probs({0: bad, 2: 0.5}), 0.1, True)
  assert sorted(store.get(0)) == [0]
  np.testing.assert_array_equal(store.get(0)[0], [[255, 128], [0, 51]])
  assert store.num_rejected == 8  # 4 refused updates of image 0's 2 classes


def test_crop_and_flip_are_mapped_back_to_the_whole_image(tmp_path):
  store = oaa.OAAStore.open(str(tmp_path), LABELS, (4, 4), process_index=0)
  crop = np.array([[1.0, 0.2], [0.6, 0.0]])  # the map of a mirrored bottom-right quarter
  store.update([1], _cams({1: crop}, hw=(2, 2)), _probs({1: 1.0}), 0.1, False,
               boxes=np.array([[0.5, 0.5, 1.0, 1.0]]), flips=np.array([True]))
  np.testing.assert_array_equal(store.get(1)[1], [[0, 0, 0, 0],
                                                  [0, 0, 0, 0],
                                                  [0, 0, 51, 255],
                                                  [0, 0, 0, 153]])
  # A crop of the left half at half the grid's width is resized into its 4 x 2 cells.
  left = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
  store.update([1], _cams({1: left}, hw=(4, 2)), _probs({1: 1.0}), 0.1, False,
               boxes=np.array([[0.0, 0.0, 1.0, 0.5]]), flips=np.array([False]))
  np.testing.assert_array_equal(store.get(1)[1][:, :2], [[0, 255]] * 4)
  np.testing.assert_array_equal(store.get(1)[1][2:, 2:], [[51, 255], [0, 153]])


def test_storage_is_per_positive_slot(tmp_path):
  labels = np.zeros((1000, 80), bool)
  labels[np.arange(1000), np.arange(1000) % 80] = True
  labels[::2, 3] = True
  store = oaa.OAAStore.open(str(tmp_path), labels, (28, 28), process_index=0)
  assert store.index.num_slots == labels.sum()
  path = os.path.join(str(tmp_path), 'oaa', 'process_0.u8')
  assert os.path.getsize(path) == labels.sum() * 28 * 28


def test_reopen_checks_labels_and_size(tmp_path):
  oaa.OAAStore.open(str(tmp_path), LABELS, (2, 2), process_index=0)
  with pytest.raises(UserError, match='meta.json'):
    oaa.OAAStore.open(str(tmp_path), LABELS, (3, 3), process_index=0)
  with pytest.raises(UserError, match='meta.json'):
    oaa.OAAStore.open(str(tmp_path), LABELS[::-1], (2, 2), process_index=0)
  # reset (training from step 0) starts empty with the new shape.
  store = oaa.OAAStore.open(str(tmp_path), LABELS, (3, 3), process_index=0, reset=True)
  assert store.num_written() == 0


def test_merged_view_takes_the_max_over_processes(tmp_path):
  s0 = oaa.OAAStore.open(str(tmp_path), LABELS, (2, 2), process_index=0)
  s1 = oaa.OAAStore.open(str(tmp_path), LABELS, (2, 2), process_index=1)
  s0.update([0], _cams({0: [[1.0, 0.0], [0.0, 0.0]]}), _probs({0: 1.0}), 0.1, False)
  s1.update([0], _cams({0: [[0.0, 1.0], [0.0, 0.0]]}), _probs({0: 1.0}), 0.1, False)
  s1.update([1], _cams({1: [[0.0, 0.0], [0.2, 0.0]]}), _probs({1: 1.0}), 0.1, False)
  s0.flush()
  s1.flush()
  merged = oaa.MergedOAA(str(tmp_path), LABELS)
  np.testing.assert_array_equal(merged.get(0)[0], [[255, 255], [0, 0]])
  assert 2 not in merged.get(0)
  np.testing.assert_array_equal(merged.get(1)[1], [[0, 0], [51, 0]])


# --- the accumulation policy against the release ---------------------------------------------

def release_accumulation(store, epoch, training_epoch, anchor, label, att_graph, att_mid, probs,
                         members=(0,), first_epoch=1):
  """A numpy re-statement of the release's OAA writes (models/vgg_gnn.py, CoattentionModel.
  forward), one group: its files `<index>_<class>.png` are the keys (image, class) of `store`.

  The release writes item 0 only (`atts[0, la]`, the anchor, named by its list position) and
  only when `epoch > 0`; `members` and `first_epoch` generalise both for the other policies.
  att_graph, att_mid: [K, L, h, w] (its self.map1, self.map); probs: [K, L] graph readout.
  """
  if epoch < first_epoch:
    return
  for k in members:
    atts = (att_graph[k] + att_mid[k]) / 2
    atts[atts < 0] = 0
    for la in np.flatnonzero(label[k]):
      name = (int(anchor[k]), int(la))
      att = atts[la]
      att = np.rint(att / (att.max() + 1e-8) * 255)
      if epoch == training_epoch - 1 and name not in store:
        store[name] = att
        continue
      if probs[k, la] < 0.1:
        continue
      store[name] = att if name not in store else np.maximum(store[name], att)


@pytest.mark.parametrize('members,first_epoch', [('anchor', 1), ('all', 0), ('anchor', 0)])
def test_policy_matches_the_release_restatement(tmp_path, members, first_epoch):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from gwsss_jax.data import sampler  # pylint: disable=g-import-not-at-top
  from gwsss_jax.models import classifier  # pylint: disable=g-import-not-at-top
  n, num_classes, k, hw, epochs, batch = 6, 4, 3, (3, 4), 3, 2
  labels = _labels()[:n, :num_classes]
  cams_config = ml_collections.ConfigDict({
      'prob_threshold': 0.1, 'oaa_members': members, 'oaa_first_epoch': first_epoch,
      'oaa_fill_last_epoch': True})
  store = oaa.OAAStore.open(str(tmp_path), labels, hw, process_index=0)
  reference = {}
  rng = np.random.default_rng(7)
  for epoch in range(epochs):
    groups, _ = sampler.make_groups(labels, k, seed=0, epoch=epoch)
    for rows in rng.permutation(n).reshape(-1, batch):
      index = groups[rows]                                                    # [b, K]
      cam_graph = rng.normal(size=(batch, k) + hw + (num_classes,)).astype(np.float32)
      cam_mid = rng.normal(size=cam_graph.shape).astype(np.float32)
      probs = rng.random((batch, k, num_classes)).astype(np.float32) * 0.3
      group_labels = labels[index].astype(np.float32)
      cams = classifier.cams_for_export({'cam_graph': jnp.asarray(cam_graph),
                                         'cam_mid': jnp.asarray(cam_mid)}, group_labels)
      if members == 'anchor':
        cams = cams[:, :1]  # what train_cls computes for this policy
      oaa.accumulate_groups(store, cams_config, epoch, epochs - 1, index, cams, probs)
      for g in range(batch):
        release_accumulation(
            reference, epoch, epochs, index[g], labels[index[g]],
            np.moveaxis(cam_graph[g], -1, 1), np.moveaxis(cam_mid[g], -1, 1), probs[g],
            members=(0,) if members == 'anchor' else range(k), first_epoch=first_epoch)
  got = {(i, c): m for i in range(n) for c, m in store.get(i).items()}
  assert sorted(got) == sorted(reference)
  for key, want in reference.items():
    np.testing.assert_array_equal(got[key], want.astype(np.uint8), err_msg=str(key))
  assert len(reference) == labels.sum()  # the last epoch filled every slot


def test_policy_without_last_epoch_fill_leaves_unconfident_slots_missing(tmp_path):
  import ml_collections  # pylint: disable=g-import-not-at-top
  cams_config = ml_collections.ConfigDict({
      'prob_threshold': 0.1, 'oaa_members': 'anchor', 'oaa_first_epoch': 0,
      'oaa_fill_last_epoch': False})
  store = oaa.OAAStore.open(str(tmp_path), LABELS, (2, 2), process_index=0)
  cams = np.ones((1, 1, 2, 2, 3), np.float32)
  low = np.full((1, 2, 3), 0.05, np.float32)
  oaa.accumulate_groups(store, cams_config, 1, 1, [[0, 1]], cams, low)
  assert store.num_written() == 0
  cams_config.oaa_fill_last_epoch = True
  oaa.accumulate_groups(store, cams_config, 1, 1, [[0, 1]], cams, low)
  assert sorted(store.get(0)) == [0, 2] and store.get(1) == {}  # the anchor's slots only


def test_policy_takes_only_the_first_oaa_rounds(tmp_path):
  """`oaa_rounds=1`: groups of later rounds leave the store as it is; 0 takes every round."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  labels = np.array([[1, 0], [0, 1], [1, 1]], bool)
  cams = np.random.default_rng(0).random((3, 1, 2, 2, 2)).astype(np.float32)
  probs = np.ones((3, 1, 2), np.float32)
  index, rounds = [[0], [1], [2]], [0, 2, 1]
  got = {}
  for oaa_rounds in (0, 1, 2):
    cams_config = ml_collections.ConfigDict({
        'prob_threshold': 0.1, 'oaa_members': 'anchor', 'oaa_first_epoch': 0,
        'oaa_fill_last_epoch': False, 'oaa_rounds': oaa_rounds})
    store = oaa.OAAStore.open(str(tmp_path / str(oaa_rounds)), labels, (2, 2), process_index=0)
    oaa.accumulate_groups(store, cams_config, 0, 1, index, cams, probs, rounds=rounds)
    got[oaa_rounds] = {i: sorted(store.get(i)) for i in range(3)}
    if oaa_rounds:
      with pytest.raises(ValueError, match='oaa_rounds'):
        oaa.accumulate_groups(store, cams_config, 0, 1, index, cams, probs)
  assert got[0] == {0: [0], 1: [1], 2: [0, 1]}
  assert got[1] == {0: [0], 1: [], 2: []}       # rounds 2 and 1 left out
  assert got[2] == {0: [0], 1: [], 2: [0, 1]}   # round 2 left out


# --- kill and resume -------------------------------------------------------------------------

N, L, HW, EPOCHS, STEPS = 6, 4, (3, 5), 3, 4  # 4 steps of 3 images per epoch (each image twice)
CHECKPOINT, KILL_AFTER = 9, 10  # checkpoint after step 9 (last epoch), killed after step 10


def _labels():
  rng = np.random.default_rng(1)
  labels = rng.random((N, L)) < 0.5
  labels[np.arange(N), np.arange(N) % L] = True
  return labels


def _step(t):
  """Step t's (index, cams, probs, last_epoch): a deterministic function of t."""
  rng = np.random.default_rng(100 + t)
  index = rng.choice(N, 3, replace=False)
  cams = rng.random((3,) + HW + (L,)).astype(np.float32)
  probs = rng.random((3, L)).astype(np.float32) * 0.3  # many below the 0.1 threshold
  return index, cams, probs, t // STEPS == EPOCHS - 1


def _apply(store, steps):
  for t in steps:
    index, cams, probs, last = _step(t)
    store.update(index, cams, probs, 0.1, last)


def _same(a, b):
  return sorted(a) == sorted(b) and all(np.array_equal(a[c], b[c]) for c in a)


def child(workdir):
  """Trains until the kill: steps 0..CHECKPOINT, flush + checkpoint, then on to KILL_AFTER."""
  store = oaa.OAAStore.open(workdir, _labels(), HW, process_index=0)
  _apply(store, range(CHECKPOINT + 1))
  store.flush()
  with open(os.path.join(workdir, 'checkpoint'), 'w') as f:
    f.write(str(CHECKPOINT))
  _apply(store, range(CHECKPOINT + 1, KILL_AFTER + 1))
  print('ready', flush=True)
  signal.pause()


@pytest.mark.slow
def test_store_survives_kill_and_replay(tmp_path):
  killed, clean = str(tmp_path / 'killed'), str(tmp_path / 'clean')
  code = f'import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); ' \
         f'import test_oaa; test_oaa.child({killed!r})'
  proc = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
  try:
    assert proc.stdout.readline().strip() == b'ready'
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert proc.returncode == -signal.SIGKILL
  # Resume: reopen, replay every step after the checkpoint, finish training.
  with open(os.path.join(killed, 'checkpoint')) as f:
    resumed_from = int(f.read())
  store = oaa.OAAStore.open(killed, _labels(), HW, process_index=0)
  # SIGKILL lost none of the writes after the checkpoint (the kernel owns the mapped pages).
  partial = oaa.OAAStore.open(str(tmp_path / 'partial'), _labels(), HW, process_index=0)
  _apply(partial, range(KILL_AFTER + 1))
  for i in range(N):
    assert _same(store.get(i), partial.get(i))
  _apply(store, range(resumed_from + 1, EPOCHS * STEPS))
  reference = oaa.OAAStore.open(clean, _labels(), HW, process_index=0)
  _apply(reference, range(EPOCHS * STEPS))
  # The steps after the kill change the store (the comparison below is not vacuous).
  assert not all(_same(partial.get(i), reference.get(i)) for i in range(N))
  for i in range(N):
    assert _same(store.get(i), reference.get(i))
