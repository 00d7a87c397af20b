"""Online attention accumulation (OAA, Jiang et al. ICCV 2019), as the paper uses it.

The paper finds object regions "following OAA" (section "Pseudo Ground-Truth Generation by
Self-Ensembling"): during classifier training, every time an image is seen, the self-ensembled CAM
of each of its classes (graph readout + intermediate readout, averaged, negatives clipped, divided
by its max) is scaled to 0..255 and merged into an accumulated map by an element-wise max. A class
whose predicted probability is below a threshold (0.1 in the release) is skipped, except in the
last epoch, which writes the map of a class that has none yet.

Which maps a training step feeds in (`accumulate_groups`, the keys `cams.oaa_*`): the maps of
the group's anchor only (`oaa_members='anchor'`: every image is updated once per epoch, at its
own anchor turn, as OAA does for single images and the release for its item 0), or of all K
members ('all': images often drawn as partners are updated many times per epoch); from epoch
`oaa_first_epoch` on (OAA and the release start at 1: `epoch > 0`); from the first
`oaa_rounds` of the epoch's `train.repeats_per_epoch` rounds of groups only (0: all; a
single-image baseline that sees each image R times an epoch takes 1 to match 'anchor'); and
whether the last epoch writes the maps still missing (`oaa_fill_last_epoch`).

Readouts. A store accumulates one or more readouts ('ensemble', 'graph', 'intermediate'; the
store's `readouts`): `cams.source` alone, or all three with `cams.oaa_all_readouts`, so that one
training run gives Table 3's readout rows on the same pipeline. The probability test, the
last-epoch fill and the "written" byte are per slot and shared by the readouts: every readout sees
the same updates, and the ensemble maps of a three-readout store equal those of an ensemble-only
store bitwise.

Storage. One memory-mapped uint8 array of shape [S, R, h, w] over the (image, positive class)
slots and the R readouts, S = number of positive entries of the [N, L] label matrix (COCO: ~240k
slots of 28x28 = 190 MB per readout, never an [N, L, h, w] array), plus a [S] "written" byte per
slot:

  <workdir>/oaa/meta.json          N, L, h, w, S, the readouts and a digest of the label matrix
  <workdir>/oaa/process_<i>.u8     maps written by process i (multi-host: one file per process)
  <workdir>/oaa/process_<i>.written

Kill and resume. `update` is a max (idempotent) and a write-if-missing, both per slot, so
replaying the steps after the last checkpoint on a store that already holds some of them gives the
same store as an uninterrupted run: a slot written before the checkpoint sees the same maxima; a
slot first written after it keeps the first map written (which the replay recomputes identically)
and the max of the later ones. Within a slot the map is written before its "written" byte, and a
written slot whose map is all zero counts as missing, so a half-applied update is completed by the
replay. A SIGKILL loses nothing written to the mapping (the kernel owns the pages); `flush()`
(msync) before each checkpoint save makes everything up to that checkpoint durable against a
machine crash too.

Crops and flips. The store's grid covers the whole image. A training input that showed a random
crop, possibly mirrored, passes its box and flip to `update`: the map is mirrored back and resized
into the box's cells, and the max merges it with what other crops saw (cells outside the box are
left as they are). Without boxes the maps must already cover the whole, unmirrored image.
"""

import hashlib
import json
import os

import cv2
import numpy as np
from absl import logging

from gwsss_jax.common import io as gio
from gwsss_jax.common.errors import UserError

META_FILE = 'meta.json'


def store_dir(workdir: str) -> str:
  return os.path.join(workdir, 'oaa')


def _digest(label_matrix: np.ndarray) -> str:
  return hashlib.sha256(np.packbits(label_matrix, axis=None).tobytes()
                        + str(label_matrix.shape).encode()).hexdigest()[:16]


class SlotIndex:
  """(image, class) -> slot over the positive entries of a label matrix, in row-major order."""

  def __init__(self, label_matrix):
    labels = np.asarray(label_matrix).astype(bool)
    if labels.ndim != 2:
      raise ValueError(f'label_matrix must be [N, L], got shape {labels.shape}')
    self.labels = labels
    self.num_images, self.num_classes = labels.shape
    self.offsets = np.concatenate([[0], np.cumsum(labels.sum(1))]).astype(np.int64)
    self.num_slots = int(self.offsets[-1])
    self.digest = _digest(labels)

  def classes(self, i: int) -> np.ndarray:
    """Positive class indices of image i, sorted."""
    return np.flatnonzero(self.labels[i])

  def slots(self, i: int) -> np.ndarray:
    """Slots of image i's positive classes, in the order of `classes(i)`."""
    return np.arange(self.offsets[i], self.offsets[i + 1])


def _open_memmap(path: str, shape, reset: bool) -> np.memmap:
  """Opens `path` read-write; creates it zero-filled (atomically, by rename) when absent."""
  size = int(np.prod(shape))
  if reset or not os.path.exists(path):
    with gio.atomic_path(path) as tmp:
      with open(tmp, 'wb') as f:
        f.truncate(size)  # sparse, reads as zeros
  if os.path.getsize(path) != size:
    raise UserError(f'{path}: {os.path.getsize(path)} bytes, expected {size} for shape {shape}; '
                    'the file is from another run: delete the oaa/ folder of the workdir')
  if size == 0:
    return np.zeros(shape, np.uint8).view(np.memmap)
  return np.memmap(path, dtype=np.uint8, mode='r+', shape=tuple(shape))


def _readout_position(readouts, readout) -> int:
  if readout is None:
    return 0
  if readout not in readouts:
    raise UserError(f'the OAA store holds the readouts {list(readouts)}, not {readout!r}: train '
                    'with config.cams.oaa_all_readouts=True to accumulate all three')
  return readouts.index(readout)


class OAAStore:
  """The accumulated CAMs of one process. Use `OAAStore.open`, then `update` every step,
  `flush` before each checkpoint save."""

  def __init__(self, directory, index: SlotIndex, map_hw, process_index: int, maps, written,
               readouts=('ensemble',)):
    self.directory = directory
    self.index = index
    self.map_hw = tuple(map_hw)
    self.readouts = tuple(readouts)
    self.process_index = process_index
    self._maps = maps
    self._written = written
    self.num_rejected = 0  # non-finite maps refused (a diverging step)

  @classmethod
  def open(cls, workdir: str, label_matrix, map_hw, process_index: int | None = None,
           reset: bool = False, readouts=('ensemble',)) -> 'OAAStore':
    """Opens (or creates) the store of `process_index` (default: this JAX process).

    Args:
      workdir: the run's workdir; the store lives in `<workdir>/oaa/`.
      label_matrix: [N, L] bool labels of the training split, which defines the slots.
      map_hw: (h, w) of the maps (the classifier's feature resolution).
      process_index: whose file to open; None = `jax.process_index()`.
      reset: start empty (training from step 0), discarding this process's earlier maps.
      readouts: the readouts accumulated (the maps `update` takes, by name).
    """
    if process_index is None:
      import jax  # pylint: disable=g-import-not-at-top
      process_index = jax.process_index()
    index = SlotIndex(label_matrix)
    h, w = (int(v) for v in map_hw)
    directory = store_dir(workdir)
    os.makedirs(directory, exist_ok=True)
    meta = {'num_images': index.num_images, 'num_classes': index.num_classes,
            'map_hw': [h, w], 'num_slots': index.num_slots, 'labels_digest': index.digest,
            'readouts': list(readouts)}
    meta_path = os.path.join(directory, META_FILE)
    if os.path.exists(meta_path):
      with open(meta_path) as f:
        old = json.load(f)
      if old != meta:
        if not reset:
          raise UserError(f'{meta_path}: the OAA store was made for another dataset, map size '
                          f'or readouts ({old} vs {meta}); delete {directory} or train from '
                          'step 0')
        gio.atomic_write_text(meta_path, json.dumps(meta, indent=1) + '\n')
    else:
      gio.atomic_write_text(meta_path, json.dumps(meta, indent=1) + '\n')
    base = os.path.join(directory, f'process_{process_index}')
    maps = _open_memmap(base + '.u8', (index.num_slots, len(readouts), h, w), reset)
    written = _open_memmap(base + '.written', (index.num_slots,), reset)
    return cls(directory, index, (h, w), process_index, maps, written, readouts)

  def _place(self, maps, box, flipped) -> np.ndarray:
    """[n, h, w] uint8 maps of a crop -> [n, H, W] on the store's whole-image grid (zero
    outside the crop): un-flipped, resized into the box's cells."""
    if flipped:
      maps = maps[:, :, ::-1]
    if box is None:
      return maps
    gh, gw = self.map_hw
    y0, x0, y1, x1 = (float(v) for v in box)
    r0, c0 = int(round(y0 * gh)), int(round(x0 * gw))
    r1, c1 = max(int(round(y1 * gh)), r0 + 1), max(int(round(x1 * gw)), c0 + 1)
    r0, c0 = min(r0, gh - 1), min(c0, gw - 1)
    r1, c1 = min(r1, gh), min(c1, gw)
    out = np.zeros((maps.shape[0], gh, gw), np.uint8)
    for k in range(maps.shape[0]):
      out[k, r0:r1, c0:c1] = cv2.resize(np.ascontiguousarray(maps[k]), (c1 - c0, r1 - r0),
                                        interpolation=cv2.INTER_LINEAR)
    return out

  def update(self, index, cams, probs, threshold: float, last_epoch: bool, boxes=None,
             flips=None) -> None:
    """Merges one step's CAMs into the store (the OAA rule).

    Args:
      index: [n] int dataset indices of the images (e.g. the anchors, or all group members).
      cams: {readout: [n, h, w, L]} for every readout of the store (an array for a store of one
        readout): float in 0..1, ReLU'd, max-normalised maps.
      probs: [n, L] class probabilities of the same images.
      threshold: a positive class with probability below it is skipped ...
      last_epoch: ... except in the last epoch, where its map is written if the slot has none.
      boxes: optional [n, 4] (y0, x0, y1, x1) in 0..1: the part of the whole image that each
        input showed (a training crop); None = the whole image. The map is resized into those
        cells of the store's grid (whose size is `map_hw` over the whole image).
      flips: optional [n] bool: the input was mirrored; the map is mirrored back first.

    A map or probability that is NaN or Inf (a diverging step) is refused, counted in
    `num_rejected` with a warning: cast to uint8 it would become 0 or 255 for good.
    """
    index = np.asarray(index).reshape(-1)
    if not isinstance(cams, dict):
      if len(self.readouts) != 1:
        raise ValueError(f'the store accumulates {self.readouts}: pass cams as a dict')
      cams = {self.readouts[0]: cams}
    if sorted(cams) != sorted(self.readouts):
      raise ValueError(f'cams hold the readouts {sorted(cams)}, the store {self.readouts}')
    cams = np.stack([np.asarray(cams[r]) for r in self.readouts], axis=1)  # [n, R, h, w, L]
    probs = np.asarray(probs)
    n = index.shape[0]
    if cams.ndim != 5 or cams.shape[0] != n or cams.shape[4] != self.index.num_classes:
      raise ValueError(f'cams must be [{n}, h, w, {self.index.num_classes}] per readout, got '
                       f'{cams.shape[:1] + cams.shape[2:]}')
    if boxes is None and cams.shape[2:4] != self.map_hw:
      raise ValueError(f'cams of the whole image must be {self.map_hw}, got {cams.shape[2:4]}')
    if probs.shape != (n, self.index.num_classes):
      raise ValueError(f'probs must be [{n}, {self.index.num_classes}], got {probs.shape}')
    for row, i in enumerate(index):
      classes = self.index.classes(int(i))
      if classes.size == 0:
        continue
      if not (np.isfinite(cams[row][..., classes]).all()
              and np.isfinite(probs[row, classes]).all()):
        self.num_rejected += classes.size
        logging.warning('OAA: refused the non-finite maps of image %d (classes %s)', int(i),
                        classes.tolist())
        continue
      slots = self.index.slots(int(i))
      new = np.rint(np.clip(np.moveaxis(cams[row][..., classes], -1, 0), 0.0, 1.0)
                    * 255.0).astype(np.uint8)                     # [n_classes, R, h, w]
      new = self._place(new.reshape((-1,) + new.shape[2:]),
                        None if boxes is None else boxes[row],
                        flips is not None and bool(flips[row]))
      new = new.reshape((classes.size, len(self.readouts)) + self.map_hw)
      confident = probs[row, classes] >= threshold
      for k in range(classes.size):
        s = slots[k]
        if confident[k]:
          np.maximum(self._maps[s], new[k], out=self._maps[s])
        elif last_epoch and (not self._written[s] or not self._maps[s].any()):
          self._maps[s] = new[k]
        else:
          continue
        self._written[s] = 1

  def flush(self) -> None:
    """msync: makes every update so far durable (call before saving a checkpoint)."""
    for arr in (self._maps, self._written):
      if isinstance(arr, np.memmap) and arr.size:
        arr.flush()

  def get(self, i: int, readout: str | None = None) -> dict:
    """{class_idx: uint8 [h, w]} of image i's written maps of `readout` (None: the store's
    first) in this process's file."""
    r = _readout_position(self.readouts, readout)
    return {int(c): np.array(self._maps[s, r])
            for c, s in zip(self.index.classes(i), self.index.slots(i)) if self._written[s]}

  def num_written(self) -> int:
    return int(np.count_nonzero(self._written))


class MergedOAA:
  """Read-only view of every process's store, merged by max (the export reads this)."""

  def __init__(self, workdir: str, label_matrix):
    directory = store_dir(workdir)
    meta_path = os.path.join(directory, META_FILE)
    if not os.path.exists(meta_path):
      raise UserError(f'{meta_path} not found: cams.method=oaa needs the maps that train_cls '
                      'accumulates; run the train_cls stage first or set '
                      'cams.method=group_inference')
    with open(meta_path) as f:
      meta = json.load(f)
    self.index = SlotIndex(label_matrix)
    if meta['labels_digest'] != self.index.digest:
      raise UserError(f'{meta_path}: the OAA store was accumulated for other labels than '
                      f'config.data.train_split={self.index.num_images} images; rerun train_cls')
    self.map_hw = tuple(meta['map_hw'])
    self.readouts = tuple(meta.get('readouts', ('ensemble',)))
    shape = (self.index.num_slots, len(self.readouts)) + self.map_hw
    self._files = []
    for name in sorted(os.listdir(directory)):
      if name.startswith('process_') and name.endswith('.u8'):
        base = os.path.join(directory, name[:-len('.u8')])
        if self.index.num_slots == 0:
          continue
        self._files.append((np.memmap(base + '.u8', np.uint8, 'r', shape=shape),
                            np.memmap(base + '.written', np.uint8, 'r',
                                      shape=(self.index.num_slots,))))
    if not self._files and self.index.num_slots:
      raise UserError(f'{directory}: no process_<i>.u8 file; run train_cls first')

  def num_missing(self) -> int:
    """How many (image, class) slots no process has written (`get` leaves them out)."""
    written = np.zeros(self.index.num_slots, bool)
    for _, wr in self._files:
      written |= np.asarray(wr, bool)
    return int(self.index.num_slots - np.count_nonzero(written))

  def get(self, i: int, readout: str | None = None) -> dict:
    """{class_idx: uint8 [h, w]} of image i's `readout` (None: the first), max over processes;
    classes never written absent."""
    r = _readout_position(self.readouts, readout)
    out = {}
    for c, s in zip(self.index.classes(i), self.index.slots(i)):
      maps = [m[s, r] for m, wr in self._files if wr[s]]
      if maps:
        out[int(c)] = np.max(np.stack(maps), axis=0)
    return out


def accumulate_groups(store: OAAStore, cams_config, epoch: int, last_epoch: int, index, cams,
                      probs, boxes=None, flips=None, rounds=None) -> None:
  """One training step's update of the store under the `cams.oaa_*` policy.

  Args:
    store: the process's `OAAStore`.
    cams_config: `config.cams` (prob_threshold, oaa_members, oaa_first_epoch,
      oaa_fill_last_epoch, and oaa_rounds if present).
    epoch: the step's epoch (0-based); last_epoch: the run's last epoch.
    index: [b, K] dataset indices of the group members (column 0 the anchor).
    cams: {readout: [b, K', h, w, L]} export maps (`classifier.cams_for_export`) of the first
      K' members (K' = K, or 1 when only the anchors' maps were computed), or one such array
      for a store of one readout.
    probs: [b, K, L] class probabilities (the graph readout).
    boxes, flips: optional [b, K, 4] and [b, K] (the training crops, `OAAStore.update`).
    rounds: optional [b], each group's round within the epoch (the batch's 'round'); groups of a
      round past `oaa_rounds` (when it is > 0) are left out.
  """
  if epoch < cams_config.oaa_first_epoch:
    return
  index, probs = np.asarray(index), np.asarray(probs)
  members = 1 if cams_config.oaa_members == 'anchor' else index.shape[1]
  if not isinstance(cams, dict):
    cams = {store.readouts[0]: cams} if len(store.readouts) == 1 else cams
  held = min(np.shape(c)[1] for c in cams.values())
  if held < members:
    raise ValueError(f'cams hold {held} members per group, the policy needs {members}')
  keep = slice(None)
  oaa_rounds = cams_config.get('oaa_rounds', 0)
  if oaa_rounds:
    if rounds is None:  # taking every round would silently break the policy
      raise ValueError(f'cams.oaa_rounds={oaa_rounds} needs the groups\' rounds')
    keep = np.flatnonzero(np.asarray(rounds) < oaa_rounds)
    if not len(keep):
      return
  take = lambda x: None if x is None else np.asarray(x)[keep, :members].reshape(
      (-1,) + np.shape(x)[2:])
  store.update(take(index), {r: take(c) for r, c in cams.items()}, take(probs),
               threshold=cams_config.prob_threshold,
               last_epoch=bool(cams_config.oaa_fill_last_epoch) and epoch == last_epoch,
               boxes=take(boxes), flips=take(flips))
