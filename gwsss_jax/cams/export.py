"""CAM files in IRNet's format, from the OAA store or from group inference.

One file per training image, `<workdir>/cams/<name>.npy`, a pickled dict that IRNet's tools read
with `np.load(path, allow_pickle=True).item()`:

  'keys'      int64 [n]          the image's classes, 0..L-1 (background excluded, as IRNet's
                                 `valid_cat`); IRNet's eval pads a background channel in front
                                 (`np.pad(keys + 1, (1, 0))`), so label = keys[argmax] + 1
  'cam'       float32 [n, h, w]  maps at the classifier's feature resolution, max-normalised
  'high_res'  float32 [n, H, W]  the same maps resized (bilinear, half-pixel centres) to the image
                                 size and max-normalised again
  'source'    str                the readout of 'cam'/'high_res' ('ensemble', 'graph', ...)
  'method'    str                'oaa' or 'group_inference'
  'cam_graph', 'cam_intermediate', 'cam_ensemble'
              float32 [n, h, w]  group inference only: every readout at feature resolution, so
                                 that eval_cams can compare them (paper, Table 3)

All maps are non-negative and divided by their maximum (IRNet's `/ (max + 1e-5)`), so an image's
background is found by thresholding (`cams.bg_threshold`) or by saliency (`pseudo_labels`).
"""

import concurrent.futures
import functools
import json
import os
import time

import cv2
import numpy as np
from PIL import Image

from gwsss_jax.cams import oaa
from gwsss_jax.cams.pseudo import normalize_maps
from gwsss_jax.common import console
from gwsss_jax.common import io as gio
from gwsss_jax.common.errors import UserError
from gwsss_jax.data import core

READOUTS = ('graph', 'intermediate', 'ensemble')
MANIFEST = 'export.json'


def cam_dir(workdir: str) -> str:
  return os.path.join(workdir, 'cams')


def cam_path(workdir: str, name: str) -> str:
  return os.path.join(cam_dir(workdir), name + '.npy')


def png_dir(workdir: str) -> str:
  return os.path.join(workdir, 'cams_png')


def resize_maps(maps, hw) -> np.ndarray:
  """[n, h, w] -> float32 [n, H, W], bilinear with half-pixel centres (torch's
  `align_corners=False`, as IRNet's `F.interpolate`)."""
  maps = np.asarray(maps, np.float32)
  h, w = (int(v) for v in hw)
  if maps.shape[0] == 0:
    return np.zeros((0, h, w), np.float32)
  if maps.shape[1:] == (h, w):
    return maps.copy()
  out = [cv2.resize(maps[i], (w, h), interpolation=cv2.INTER_LINEAR)
         for i in range(maps.shape[0])]
  return np.stack(out).astype(np.float32)


def make_record(keys, maps: dict, image_hw, source: str, method: str) -> dict:
  """The CAM file of one image (see the module docstring).

  Args:
    keys: [n] class indices of the image.
    maps: {readout: [n, h, w] non-negative float maps at feature resolution}; must hold `source`.
    image_hw: (H, W) of the original image.
    source: the readout written as 'cam' and 'high_res'.
    method: 'oaa' or 'group_inference' (recorded).
  """
  keys = np.asarray(keys, np.int64).reshape(-1)
  low = {r: normalize_maps(m) for r, m in maps.items()}
  record = {
      'keys': keys,
      'cam': low[source],
      'high_res': normalize_maps(resize_maps(low[source], image_hw)),
      'source': source,
      'method': method,
  }
  if len(low) > 1:
    for r, m in low.items():
      record[f'cam_{r}'] = m
  return record


def save_record(path: str, record: dict) -> None:
  gio.atomic_save_npy(path, record)


def load_record(path: str) -> dict:
  """Reads a CAM file as IRNet does; UserError naming the file when absent or unreadable."""
  if not os.path.exists(path):
    raise UserError(f'CAM file not found: {path} (run the export_cams stage first)')
  try:
    record = np.load(path, allow_pickle=True).item()
  except (OSError, ValueError, EOFError) as e:
    raise UserError(f'unreadable CAM file {path}: {e}; delete it and rerun export_cams') from None
  if not isinstance(record, dict) or 'keys' not in record or 'high_res' not in record:
    raise UserError(f'{path}: not a CAM file (expected a dict with keys and high_res)')
  return record


def readouts(record: dict) -> list:
  """The readouts an exported record holds: every `cam_<readout>`, else its 'source'."""
  found = [r for r in READOUTS if f'cam_{r}' in record]
  return found or [str(record.get('source', 'ensemble'))]


def high_res(record: dict, readout: str) -> np.ndarray:
  """[n, H, W] maps of `readout` at image resolution, max-normalised."""
  if readout == record.get('source', 'ensemble') or f'cam_{readout}' not in record:
    return np.asarray(record['high_res'], np.float32)
  return normalize_maps(resize_maps(record[f'cam_{readout}'], record['high_res'].shape[1:]))


def save_pngs(directory: str, name: str, record: dict) -> None:
  """8-bit greyscale maps `<directory>/<name>_<class_idx>.png` (class index 0..L-1)."""
  for c, m in zip(record['keys'], record['high_res']):
    ok, buf = cv2.imencode('.png', np.rint(np.clip(m, 0, 1) * 255).astype(np.uint8))
    if not ok:
      raise OSError(f'PNG encoding failed for {name} class {c}')
    gio.atomic_write_bytes(os.path.join(directory, f'{name}_{int(c)}.png'), buf.tobytes())


def image_hw(path: str) -> tuple:
  """(H, W) of an image file, read from its header."""
  try:
    with Image.open(path) as img:
      w, h = img.size
  except (OSError, SyntaxError) as e:
    raise UserError(f'unreadable image {path}: {e}') from None
  return h, w


def check_manifest(workdir: str, settings: dict) -> None:
  """Records the export settings; refuses to mix files of other settings into `cams/`."""
  path = os.path.join(cam_dir(workdir), MANIFEST)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if old != settings:
      raise UserError(f'{path}: {cam_dir(workdir)} holds CAMs exported with {old}, not {settings}; '
                      'delete the folder (or use another workdir) to export again')
    return
  gio.atomic_write_text(path, json.dumps(settings, indent=1, sort_keys=True) + '\n')


class Writer:
  """Builds and writes CAM files on a few threads (resizing and npy encoding release the GIL),
  with a progress bar in images/s."""

  def __init__(self, workdir: str, total: int, save_png: bool, desc: str, threads: int = 4):
    self.workdir = workdir
    self.save_png = save_png
    self.pool = concurrent.futures.ThreadPoolExecutor(threads)
    self.pending = []
    self.done = 0
    self.start = time.time()
    self.bar = console.progress(total, desc)
    os.makedirs(cam_dir(workdir), exist_ok=True)
    if save_png:
      os.makedirs(png_dir(workdir), exist_ok=True)

  def _write(self, name, keys, maps, image_path, source, method):
    record = make_record(keys, maps, image_hw(image_path), source, method)
    save_record(cam_path(self.workdir, name), record)
    if self.save_png:
      save_pngs(png_dir(self.workdir), name, record)

  def submit(self, name, keys, maps, image_path, source, method) -> None:
    self.pending.append(self.pool.submit(self._write, name, keys, maps, image_path, source,
                                         method))
    self._reap(block=len(self.pending) > 64)

  def _reap(self, block: bool) -> None:
    if block:
      concurrent.futures.wait(self.pending, return_when=concurrent.futures.FIRST_COMPLETED)
    still = []
    for f in self.pending:
      if f.done():
        f.result()
        self.done += 1
        self.bar.update(1)
      else:
        still.append(f)
    self.pending = still
    self.bar.set_postfix(img_per_s=f'{self.images_per_s():.1f}', refresh=False)

  def images_per_s(self) -> float:
    return self.done / max(time.time() - self.start, 1e-9)

  def close(self) -> None:
    while self.pending:
      self._reap(block=True)
    self.pool.shutdown()
    self.bar.close()


def todo(workdir: str, dataset) -> np.ndarray:
  """[N] bool: images whose CAM file is not written yet (resuming skips the others)."""
  return np.array([not os.path.exists(cam_path(workdir, ex.name)) for ex in dataset.examples],
                  bool)


def _report(method: str, written: int, total: int, images_per_s: float) -> dict:
  """Prints what this run wrote; returns the figures of the whole export, the same whether it
  ran at once or was resumed (what one run wrote and how fast are not among them)."""
  print(f'[export_cams] {written} CAM files written ({images_per_s:.1f} img/s), '
        f'{total - written} kept from an earlier run ({method})', flush=True)
  return {'export_cams/images': int(total)}


def export_oaa(workdir: str, dataset, save_png: bool, source: str = 'ensemble') -> dict:
  """CAM files from the OAA store that train_cls accumulated: `source` as 'cam'/'high_res', and
  every readout of a store with several (`cams.oaa_all_readouts`) as 'cam_<readout>'.

  Each class map is the stored 0..255 max over epochs, divided by 255 (feature resolution of
  the training input, covering the whole image) and resized to the image size. A class that was
  never written (below the probability threshold in every epoch before the last, and the last
  epoch never reached) is exported as a zero map and counted in 'export_cams/missing_maps'
  (over the whole store, files written by an earlier run included).
  """
  merged = oaa.MergedOAA(workdir, dataset.label_matrix())
  if source not in merged.readouts:
    raise UserError(f'config.cams.source={source!r}: the OAA store of {workdir} holds the '
                    f'readouts {list(merged.readouts)}; train with config.cams.source={source!r} '
                    'or config.cams.oaa_all_readouts=True')
  pending = np.flatnonzero(todo(workdir, dataset))
  writer = Writer(workdir, len(pending), save_png, 'export_cams (oaa)')
  for i in pending:
    ex = dataset.examples[i]
    keys = merged.index.classes(int(i))
    maps = {}
    for r in merged.readouts:
      stored = merged.get(int(i), r)
      maps[r] = np.zeros((len(keys),) + merged.map_hw, np.float32)
      for k, c in enumerate(keys):
        if int(c) in stored:
          maps[r][k] = stored[int(c)].astype(np.float32) / 255.0
    writer.submit(ex.name, keys, maps, ex.image_path, source, 'oaa')
  writer.close()
  out = _report('oaa', len(pending), len(dataset), writer.images_per_s())
  out['export_cams/missing_maps'] = merged.num_missing()
  return out


load_rgb = core.read_rgb


def square_inputs(images, side: int, normalization) -> np.ndarray:
  """Whole images (RGB uint8 arrays) as the classifier sees them in group inference: each
  resized to a `side` x `side` square (bilinear), stacked and normalised ([N, side, side, 3])."""
  from gwsss_jax.data import normalization as norm_lib  # pylint: disable=g-import-not-at-top
  x = np.stack([cv2.resize(im, (side, side), interpolation=cv2.INTER_LINEAR) for im in images])
  return norm_lib.normalize(x, normalization)


def scale_sides(base: int, scales) -> list:
  """Square input side per scale: base * s rounded to a multiple of 8 (the output stride)."""
  return [max(8, int(round(base * s / 8.0)) * 8) for s in scales]


def make_group_cam_fn(model, flip: bool, feature_hw):
  """The per-batch function of group inference (jit it with the batch sharded over devices).

  `images` is a list with one [B, K, S, S, 3] array per scale. For each scale (and its mirror
  image when `flip`), runs the classifier on the groups and takes the CAMs of both readouts and
  their self-ensemble ((graph + intermediate) / 2, the paper's "Self-Ensembling"), each with
  negatives clipped, then resized to `feature_hw` (`jax.image.resize` bilinear: half-pixel
  centres, antialiased when shrinking the maps of scales > 1) and un-flipped. Returns their
  mean over the passes: {readout: [B, K, h, w, L]}.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gwsss_jax.models import classifier  # pylint: disable=g-import-not-at-top

  flips = (False, True) if flip else (False,)

  def fn(variables, images, adjacency):
    sums = {r: 0.0 for r in READOUTS}
    for x in images:
      for mirrored in flips:
        inp = jnp.flip(x, axis=3) if mirrored else x
        _, out = model.apply(variables, inp, adjacency, train=False)
        # Feature-resolution maps (the '_up' ones are unused, and dropped by XLA).
        maps = classifier.class_activation_maps(out, feature_hw)
        for r in READOUTS:
          m = jnp.maximum(maps[r], 0.0)  # ReLU before resizing, as IRNet's make_cam
          m = jax.image.resize(m, m.shape[:2] + tuple(feature_hw) + m.shape[-1:], 'bilinear')
          sums[r] = sums[r] + (jnp.flip(m, axis=3) if mirrored else m)
    n = len(images) * len(flips)
    return {r: s / n for r, s in sums.items()}

  return fn


@functools.lru_cache(maxsize=4)
def _jitted_group_cam_fn(model, flip: bool, feature_hw: tuple, mesh):
  """`make_group_cam_fn` jitted with the batch sharded over `mesh` (cached: a resumed or
  repeated export in the same process does not compile again)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from gwsss_jax.train import parallel  # pylint: disable=g-import-not-at-top

  sharded = NamedSharding(mesh, P(parallel.AXIS))
  return jax.jit(make_group_cam_fn(model, flip, feature_hw),
                 in_shardings=(NamedSharding(mesh, P()), sharded, sharded),
                 out_shardings=sharded)


def export_group_inference(config, workdir: str, dataset, model, variables,
                           normalization: dict) -> dict:
  """CAM files by group inference: every image's maps averaged over all groups, scales and flips
  it appears in (groups from the training sampler, `make_groups(seed, epoch=0)`).

  Inputs are the whole image resized to a square of `input_size * scale` (the CAMs are
  resized back to the image's own aspect). Batches of `cams.batch_size` groups (rounded up to a
  multiple of the device count) run data-parallel: one jit over a 1-D mesh of every device of
  every host, each host loading its rows; the outputs are gathered and process 0 accumulates and
  writes. Resuming recomputes only the groups that contain an unfinished image.
  `normalization` is the input convention the classifier was trained with
  (the record of `gwsss_jax.train.artifact`, a `data.normalization` spec).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from gwsss_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from gwsss_jax.data import sampler  # pylint: disable=g-import-not-at-top
  from gwsss_jax.train import parallel  # pylint: disable=g-import-not-at-top

  k = config.cams
  labels = dataset.label_matrix()
  index = oaa.SlotIndex(labels)
  num_nodes = config.model.num_nodes
  groups, adjacency = sampler.make_groups(labels, num_nodes, config.seed, 0,
                                          config.train.group_rule)
  # Process 0's view of what is done (the others may not share its file system).
  unfinished = np.asarray(multihost_utils.broadcast_one_to_all(todo(workdir, dataset)), bool)
  rows = np.flatnonzero(unfinished[groups].any(1))
  remaining = np.bincount(groups[rows].reshape(-1), minlength=len(dataset)) * unfinished
  num_todo = int(unfinished.sum())
  if num_todo == 0:
    return _report('group inference', 0, len(dataset), 0.0)

  mesh = parallel.make_mesh()
  num_devices = mesh.devices.size
  global_batch = -(-k.batch_size // num_devices) * num_devices
  num_proc, proc = jax.process_count(), jax.process_index()
  if global_batch % num_proc:
    raise UserError(f'config.cams.batch_size={k.batch_size}: {global_batch} groups per step do '
                    f'not split over {num_proc} processes')
  local_batch = global_batch // num_proc
  sides = scale_sides(input_pipeline.input_size(config), k.scales)
  base = scale_sides(input_pipeline.input_size(config), (1.0,))[0]
  sample = np.zeros((1, num_nodes, base, base, 3), np.float32)
  feature_hw = jax.eval_shape(lambda v, x, a: model.apply(v, x, a, train=False)[1]['cam_graph'],
                              variables, sample, np.zeros((1, num_nodes, num_nodes),
                                                          np.float32)).shape[2:4]
  sharded = NamedSharding(mesh, P(parallel.AXIS))
  replicated = NamedSharding(mesh, P())
  fn = _jitted_group_cam_fn(model, bool(k.flip), tuple(feature_hw), mesh)
  variables = jax.tree.map(lambda x: jax.make_array_from_process_local_data(
      replicated, np.asarray(x), np.shape(x)), variables)

  def host_batch(batch_rows):
    """This process's slice of a global batch: per-scale images and adjacency."""
    mine = batch_rows[proc * local_batch:(proc + 1) * local_batch]
    members = groups[mine].reshape(-1)
    images = [load_rgb(dataset.examples[i].image_path) for i in members]
    per_scale = []
    for side in sides:
      x = square_inputs(images, side, normalization)
      per_scale.append(x.reshape((len(mine), num_nodes) + x.shape[1:]))
    return per_scale, adjacency[mine].astype(np.float32)

  def to_global(x):
    return jax.make_array_from_process_local_data(sharded, x, (global_batch,) + x.shape[1:])

  padded = np.concatenate([rows, np.full(-len(rows) % global_batch, rows[-1], rows.dtype)])
  batches = padded.reshape(-1, global_batch)
  writer = Writer(workdir, num_todo, k.save_png, 'export_cams (group inference)') \
      if proc == 0 else None
  sums, counts = {}, {}
  with concurrent.futures.ThreadPoolExecutor(1) as loader:
    next_batch = loader.submit(host_batch, batches[0])
    for b, batch_rows in enumerate(batches):
      per_scale, adj = next_batch.result()
      if b + 1 < len(batches):
        next_batch = loader.submit(host_batch, batches[b + 1])
      out = fn(variables, [to_global(x) for x in per_scale], to_global(adj))
      out = multihost_utils.process_allgather(out, tiled=True)
      if proc != 0:
        continue
      valid = len(rows) - b * global_batch
      for g in range(min(global_batch, valid)):
        for node, i in enumerate(groups[batch_rows[g]]):
          if not unfinished[i]:
            continue
          classes = index.classes(int(i))
          maps = {r: np.moveaxis(np.asarray(out[r][g, node])[..., classes], -1, 0)
                  for r in READOUTS}
          if i in sums:
            for r in READOUTS:
              sums[i][r] += maps[r]
          else:
            sums[i] = maps
          counts[i] = counts.get(i, 0) + 1
          remaining[i] -= 1
          if remaining[i] == 0:
            acc = sums.pop(i)
            n = counts.pop(i)
            ex = dataset.examples[i]
            writer.submit(ex.name, classes, {r: m / n for r, m in acc.items()}, ex.image_path,
                          k.source, 'group_inference')
  if writer is None:
    return {}
  writer.close()
  return _report('group inference', num_todo, len(dataset), writer.images_per_s())
