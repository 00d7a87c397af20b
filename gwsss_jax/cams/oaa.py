"""Online attention accumulation (OAA, Jiang et al. ICCV 2019), as the paper uses it.

The paper finds object regions "following OAA" (section "Pseudo Ground-Truth Generation by
Self-Ensembling"): during classifier training, every time an image is seen, the self-ensembled CAM
of each of its classes (graph readout + intermediate readout, averaged, negatives clipped, divided
by its max) is scaled to 0..255 and merged into an accumulated map by an element-wise max. A class
whose predicted probability is below a threshold (0.1 in the release) is skipped, except in the
last epoch, which writes the map of a class that has none yet.

Storage. One memory-mapped uint8 array of shape [S, h, w] over the (image, positive class) slots,
S = number of positive entries of the [N, L] label matrix (COCO: ~240k slots of 28x28 = 190 MB,
never an [N, L, h, w] array), plus a [S] "written" byte per slot:

  <workdir>/oaa/meta.json          N, L, h, w, S and a digest of the label matrix
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


class OAAStore:
  """The accumulated CAMs of one process. Use `OAAStore.open`, then `update` every step,
  `flush` before each checkpoint save."""

  def __init__(self, directory, index: SlotIndex, map_hw, process_index: int, maps, written):
    self.directory = directory
    self.index = index
    self.map_hw = tuple(map_hw)
    self.process_index = process_index
    self._maps = maps
    self._written = written

  @classmethod
  def open(cls, workdir: str, label_matrix, map_hw, process_index: int | None = None,
           reset: bool = False) -> 'OAAStore':
    """Opens (or creates) the store of `process_index` (default: this JAX process).

    Args:
      workdir: the run's workdir; the store lives in `<workdir>/oaa/`.
      label_matrix: [N, L] bool labels of the training split, which defines the slots.
      map_hw: (h, w) of the maps (the classifier's feature resolution).
      process_index: whose file to open; None = `jax.process_index()`.
      reset: start empty (training from step 0), discarding this process's earlier maps.
    """
    if process_index is None:
      import jax  # pylint: disable=g-import-not-at-top
      process_index = jax.process_index()
    index = SlotIndex(label_matrix)
    h, w = (int(v) for v in map_hw)
    directory = store_dir(workdir)
    os.makedirs(directory, exist_ok=True)
    meta = {'num_images': index.num_images, 'num_classes': index.num_classes,
            'map_hw': [h, w], 'num_slots': index.num_slots, 'labels_digest': index.digest}
    meta_path = os.path.join(directory, META_FILE)
    if os.path.exists(meta_path):
      with open(meta_path) as f:
        old = json.load(f)
      if old != meta:
        if not reset:
          raise UserError(f'{meta_path}: the OAA store was made for another dataset or map size '
                          f'({old} vs {meta}); delete {directory} or train from step 0')
        gio.atomic_write_text(meta_path, json.dumps(meta, indent=1) + '\n')
    else:
      gio.atomic_write_text(meta_path, json.dumps(meta, indent=1) + '\n')
    base = os.path.join(directory, f'process_{process_index}')
    maps = _open_memmap(base + '.u8', (index.num_slots, h, w), reset)
    written = _open_memmap(base + '.written', (index.num_slots,), reset)
    return cls(directory, index, (h, w), process_index, maps, written)

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
      cams: [n, h, w, L] float in 0..1: self-ensembled, ReLU'd, max-normalised maps.
      probs: [n, L] class probabilities of the same images.
      threshold: a positive class with probability below it is skipped ...
      last_epoch: ... except in the last epoch, where its map is written if the slot has none.
      boxes: optional [n, 4] (y0, x0, y1, x1) in 0..1: the part of the whole image that each
        input showed (a training crop); None = the whole image. The map is resized into those
        cells of the store's grid (whose size is `map_hw` over the whole image).
      flips: optional [n] bool: the input was mirrored; the map is mirrored back first.
    """
    index = np.asarray(index).reshape(-1)
    cams = np.asarray(cams)
    probs = np.asarray(probs)
    n = index.shape[0]
    if cams.ndim != 4 or cams.shape[0] != n or cams.shape[3] != self.index.num_classes:
      raise ValueError(f'cams must be [{n}, h, w, {self.index.num_classes}], got {cams.shape}')
    if boxes is None and cams.shape[1:3] != self.map_hw:
      raise ValueError(f'cams of the whole image must be {self.map_hw}, got {cams.shape[1:3]}')
    if probs.shape != (n, self.index.num_classes):
      raise ValueError(f'probs must be [{n}, {self.index.num_classes}], got {probs.shape}')
    for row, i in enumerate(index):
      classes = self.index.classes(int(i))
      if classes.size == 0:
        continue
      slots = self.index.slots(int(i))
      new = np.rint(np.clip(np.moveaxis(cams[row][..., classes], -1, 0), 0.0, 1.0)
                    * 255.0).astype(np.uint8)
      new = self._place(new, None if boxes is None else boxes[row],
                        flips is not None and bool(flips[row]))
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

  def get(self, i: int) -> dict:
    """{class_idx: uint8 [h, w]} of image i's written maps in this process's file."""
    return {int(c): np.array(self._maps[s])
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
    shape = (self.index.num_slots,) + self.map_hw
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

  def get(self, i: int) -> dict:
    """{class_idx: uint8 [h, w]} of image i, max over processes; classes never written absent."""
    out = {}
    for c, s in zip(self.index.classes(i), self.index.slots(i)):
      maps = [m[s] for m, wr in self._files if wr[s]]
      if maps:
        out[int(c)] = np.max(np.stack(maps), axis=0)
    return out
