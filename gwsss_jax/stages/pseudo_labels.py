"""Stage `pseudo_labels`: a palette PNG per training image from its exported CAMs.

With saliency maps (`data.saliency_dir`): the release's rules (`cams.pseudo.saliency_label`,
thresholds `pseudo.*`). Without: IRNet's background threshold `cams.bg_threshold`.
Output: `<workdir>/pseudo_labels/<name>.png` (0 background, c + 1 for class c, 255 ignore, VOC
colour map), written atomically; images already labelled are not labelled again (their labels
are read back for the figures, which cover every label). Work is split over the
hosts (process i takes every i-th image; the workdir must be shared) and over the CPU cores
(`pseudo.num_workers` processes, 0 = all cores).

Dense CRF (`cams.crf=True`) is not offered: the maintained Python bindings of the dense CRF
(pydensecrf2, SimpleCRF) publish no wheels for this platform and need a C++ toolchain and Cython
at install time, so the option raises UserError rather than silently doing nothing.
"""

import math
import multiprocessing
import os

import cv2
import numpy as np
from PIL import Image

from gwsss_jax.cams import export
from gwsss_jax.cams import pseudo
from gwsss_jax.common import console
from gwsss_jax.common.errors import UserError
from gwsss_jax.data import datasets
from gwsss_jax.data import palette


def read_saliency(path: str, header_only: bool = False):
  """uint8 [H, W] saliency (0..255; RGB maps are converted to grey), or its (H, W) from the
  header alone; UserError naming the file when it is missing or unreadable."""
  if not os.path.exists(path):
    raise UserError(f'saliency map not found: {path} (config.data.saliency_dir needs '
                    '<name>.png for every training image; set it to \'\' to use the CAM '
                    'background threshold instead)')
  try:
    with Image.open(path) as img:
      if header_only:
        return img.size[::-1]
      img.load()
      return np.asarray(img.convert('L'), np.uint8)
  except (OSError, SyntaxError, ValueError) as e:
    raise UserError(f'corrupt saliency map {path}: {e}') from None


def _coverage(label: np.ndarray) -> float:
  return float(np.mean(label != pseudo.IGNORE))


def label_image(task) -> tuple:
  """Worker: computes and writes one pseudo label, or reads back the one an earlier run wrote.
  Returns (name, coverage, saliency resized, written now)."""
  name, cam_file, saliency_file, out_file, params = task
  if os.path.exists(out_file):
    label = palette.read_label_png(out_file)
    resized = bool(saliency_file) and read_saliency(saliency_file, header_only=True) != label.shape
    return name, _coverage(label), resized, False
  record = export.load_record(cam_file)
  cams = np.asarray(record['high_res'], np.float32)
  keys = record['keys']
  resized = False
  if saliency_file:
    saliency = read_saliency(saliency_file)
    if saliency.shape != cams.shape[1:]:
      saliency = cv2.resize(saliency, (cams.shape[2], cams.shape[1]),
                            interpolation=cv2.INTER_LINEAR)
      resized = True
    label = pseudo.saliency_label(
        cams, keys, saliency, params['conflict_threshold'], params['saliency_bg_threshold'],
        params['fg_ignore_threshold'], params['min_fg_fraction'], params['cam_norm'])
  else:
    if params['cam_norm'] == 'minmax':  # 'high_res' is max-normalised already
      cams = pseudo.minmax_maps(cams)
    label = pseudo.threshold_label(cams, keys, params['bg_threshold'])
  palette.save_label_png(out_file, label)
  return name, _coverage(label), resized, True


def run(config, workdir: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top

  if config.cams.crf:
    raise UserError('config.cams.crf=True: dense CRF is not available (no maintained dense-CRF '
                    'package installs from wheels here: pydensecrf2 and SimpleCRF need a C++ '
                    'toolchain); set cams.crf=False')
  dataset = datasets.load_split(config, config.data.train_split)
  sal_root = datasets.saliency_root(config)
  if sal_root and not os.path.isdir(sal_root):
    raise UserError(f'config.data.saliency_dir={config.data.saliency_dir!r}: directory '
                    f'{sal_root} not found')
  q = config.pseudo
  params = {'conflict_threshold': q.conflict_threshold,
            'saliency_bg_threshold': q.saliency_bg_threshold,
            'fg_ignore_threshold': q.fg_ignore_threshold,
            'min_fg_fraction': q.min_fg_fraction,
            'cam_norm': q.cam_norm,
            'bg_threshold': config.cams.bg_threshold}
  mine = dataset.examples[jax.process_index()::jax.process_count()]
  os.makedirs(pseudo.label_dir(workdir), exist_ok=True)
  # Every label, not only those written now: the figures describe all of them (labels of an
  # earlier run are read back), so that a resumed or repeated run reports the same.
  tasks = [(ex.name, export.cam_path(workdir, ex.name),
            os.path.join(sal_root, ex.name + '.png') if sal_root else '',
            pseudo.label_path(workdir, ex.name), params) for ex in mine]
  workers = min(q.num_workers or os.cpu_count() or 1, max(len(tasks), 1))
  results = {}
  bar = console.progress(len(tasks), 'pseudo_labels')
  if workers <= 1:
    outputs = map(label_image, tasks)
    pool = None
  else:
    # spawn: the parent holds JAX's threads, which fork does not copy safely.
    pool = multiprocessing.get_context('spawn').Pool(workers)
    outputs = pool.imap_unordered(label_image, tasks, chunksize=8)
  try:
    for name, cov, was_resized, written in outputs:
      results[name] = (cov, was_resized, written)
      bar.update(1)
  finally:
    if pool is not None:
      pool.terminate()
    bar.close()
  # fsum: the same total whatever order the workers finished in.
  coverage = [results[n][0] for n in sorted(results)]
  totals = np.array([len(results), math.fsum(coverage), sum(c == 0.0 for c in coverage),
                     sum(r[1] for r in results.values()), sum(r[2] for r in results.values())],
                    np.float64)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    totals = np.asarray(multihost_utils.process_allgather(totals)).sum(axis=0)
  if jax.process_index() != 0:
    return {}
  images, coverage_sum, all_ignored, resized, written = totals
  print(f'[pseudo_labels] {int(written)} labels written, {int(images - written)} kept from an '
        'earlier run', flush=True)
  out = {'pseudo_labels/images': int(images), 'pseudo_labels/all_ignored': int(all_ignored)}
  if sal_root:
    out['pseudo_labels/saliency_resized'] = int(resized)
  if images:
    out['pseudo_labels/mean_coverage'] = float(coverage_sum / images)
  return out
