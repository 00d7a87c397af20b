"""Stage `pseudo_labels`: a palette PNG per training image from its exported CAMs.

With saliency maps (`data.saliency_dir`): the release's rules (`cams.pseudo.saliency_label`,
thresholds `pseudo.*`). Without: IRNet's background threshold `cams.bg_threshold`.
Output: `<workdir>/pseudo_labels/<name>.png` (0 background, c + 1 for class c, 255 ignore, VOC
colour map), written atomically; images already labelled are not labelled again (their labels
are read back for the figures, which cover every label). Work is split over the
hosts (process i takes every i-th image; the workdir must be shared) and over the CPU cores
(`pseudo.num_workers` processes, 0 = all cores).

Dense CRF (`cams.crf=True`): IRNet's cam_to_ir_label refinement of the argmax over (background,
classes) with `cams.crf_params`, by pydensecrf2 in the worker pool (`crf.impl='reference'`) or
in batches of `crf.batch_size` on the devices (`crf.impl='jax'`; 'auto' picks:
`crf.resolve_impl`). Where the training images have
ground truth, the stage reports the labels' mIoU without the CRF (`pseudo_labels/miou_no_crf`)
and, with it on, with the CRF (`pseudo_labels/miou_crf`); both are recomputed for images
labelled by an earlier, interrupted run.
"""

import itertools
import math
import multiprocessing
import os

import cv2
import numpy as np
from PIL import Image

from gwsss_jax.cams import export
from gwsss_jax.cams import pseudo
from gwsss_jax import crf as crf_lib
from gwsss_jax.common import console
from gwsss_jax.common.errors import UserError
from gwsss_jax.crf import reference as crf_reference
from gwsss_jax.data import datasets
from gwsss_jax.data import palette
from gwsss_jax.evaluation import metrics as metrics_lib


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


def load_inputs(cam_file: str, saliency_file: str):
  """(cams [n, H, W], keys, saliency or None, whether the saliency was resized)."""
  record = export.load_record(cam_file)
  cams = np.asarray(record['high_res'], np.float32)
  saliency, resized = None, False
  if saliency_file:
    saliency = read_saliency(saliency_file)
    if saliency.shape != cams.shape[1:]:
      saliency = cv2.resize(saliency, (cams.shape[2], cams.shape[1]),
                            interpolation=cv2.INTER_LINEAR)
      resized = True
  return cams, record['keys'], saliency, resized


def make_label(cams, keys, saliency, params, refine=None):
  """The pseudo label by the configured rule; `refine` as in `pseudo.threshold_label`."""
  if saliency is not None:
    return pseudo.saliency_label(
        cams, keys, saliency, params['conflict_threshold'], params['saliency_bg_threshold'],
        params['fg_ignore_threshold'], params['min_fg_fraction'], params['cam_norm'],
        refine=refine)
  if params['cam_norm'] == 'minmax':  # 'high_res' is max-normalised already
    cams = pseudo.minmax_maps(cams)
  return pseudo.threshold_label(cams, keys, params['bg_threshold'], refine=refine)


def read_rgb(image_file: str, hw) -> np.ndarray:
  rgb = export.load_rgb(image_file)
  if rgb.shape[:2] != tuple(hw):
    raise UserError(f'{image_file} is {rgb.shape[:2]} but its CAMs are {tuple(hw)}; re-export '
                    'the CAMs')
  return rgb


def _scores(label, mask_file: str, num_classes: int):
  if not mask_file:
    return None
  return metrics_lib.confusion_matrix(label, palette.read_label_png(mask_file), num_classes)


def _coverage(label: np.ndarray) -> float:
  return float(np.mean(label != pseudo.IGNORE))


def label_image(task) -> tuple:
  """Worker: computes and writes one pseudo label, or reads back the one an earlier run wrote.

  Returns (name, coverage, saliency resized, written now, confusion matrix without CRF, with
  CRF); the matrices are None without ground truth, the second also without `cams.crf`.
  """
  name, cam_file, saliency_file, out_file, image_file, mask_file, params = task
  if os.path.exists(out_file):
    label = palette.read_label_png(out_file)
    resized = bool(saliency_file) and read_saliency(saliency_file, header_only=True) != label.shape
    cm_plain = cm_crf = None
    if mask_file:  # the label without the CRF is recomputed to score it
      cams, keys, saliency, _ = load_inputs(cam_file, saliency_file)
      plain = label if not params['crf'] else make_label(cams, keys, saliency, params)
      cm_plain = _scores(plain, mask_file, params['num_classes'])
      cm_crf = _scores(label, mask_file, params['num_classes']) if params['crf'] else None
    return name, _coverage(label), resized, False, cm_plain, cm_crf
  cams, keys, saliency, resized = load_inputs(cam_file, saliency_file)
  plain = make_label(cams, keys, saliency, params)
  label = plain
  if params['crf']:
    rgb = read_rgb(image_file, cams.shape[1:])
    crf_params = crf_lib.params_from_config(params['crf'])

    def refine(index, num_channels):
      return crf_reference.from_labels(index, rgb, num_channels, crf_params,
                                       params['crf']['gt_prob'])
    label = make_label(cams, keys, saliency, params, refine)
  palette.save_label_png(out_file, label)
  cm_crf = _scores(label, mask_file, params['num_classes']) if params['crf'] else None
  return (name, _coverage(label), resized, True, _scores(plain, mask_file, params['num_classes']),
          cm_crf)


def label_batch_jax(tasks, labeller, batch_size: int):
  """`label_image` for new labels with the CRF on the devices, `batch_size` images per call."""
  from gwsss_jax.seg.inference import pad_to  # pylint: disable=g-import-not-at-top
  for start in range(0, len(tasks), batch_size):
    chunk = tasks[start:start + batch_size]
    items = []
    for task in chunk:
      _, cam_file, saliency_file, _, image_file, _, params = task
      cams, keys, saliency, resized = load_inputs(cam_file, saliency_file)
      captured = {}

      def capture(index, num_channels, captured=captured):
        captured.update(index=index, channels=num_channels)
        return index
      plain = make_label(cams, keys, saliency, params, capture)
      items.append((task, cams, keys, saliency, resized, plain, captured,
                    read_rgb(image_file, cams.shape[1:])))
    # One compiled shape per (canvas, channels) bucket: sides rounded up to 64, channels to a
    # power of two.
    hw = [max(it[7].shape[i] for it in items) for i in (0, 1)]
    hw = [-(-v // 64) * 64 for v in hw]
    channels = max(2, 1 << (max(it[6]['channels'] for it in items) - 1).bit_length())
    gt_prob = chunk[0][6]['crf']['gt_prob']
    unary, rgb, sizes = [], [], []
    for it in items:
      n = it[6]['channels']
      if n >= 2:
        u = crf_lib.unary_from_labels(it[6]['index'], n, gt_prob, channels)
      else:  # no class: nothing to refine
        u = np.full(it[6]['index'].shape + (channels,), crf_lib.PAD_ENERGY, np.float32)
        u[..., 0] = 0
      unary.append(pad_to(u, hw, crf_lib.PAD_ENERGY))
      rgb.append(pad_to(it[7], hw, 0))
      sizes.append(it[7].shape[:2])
    while len(unary) < batch_size:  # a fixed batch: one compilation
      unary.append(unary[0])
      rgb.append(rgb[0])
      sizes.append(sizes[0])
    refined = np.asarray(labeller(np.stack(unary), np.stack(rgb), np.asarray(sizes, np.int32)))
    for k, it in enumerate(items):
      task, cams, keys, saliency, resized, plain = it[:6]
      name, _, _, out_file, _, mask_file, params = task
      h, w = it[7].shape[:2]
      label = make_label(cams, keys, saliency, params,
                         lambda index, n, r=refined[k, :h, :w]: r.astype(np.int64))
      palette.save_label_png(out_file, label)
      yield (name, _coverage(label), resized, True,
             _scores(plain, mask_file, params['num_classes']),
             _scores(label, mask_file, params['num_classes']))


def run(config, workdir: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top

  use_crf = bool(config.cams.crf)
  impl, crf_name = crf_lib.resolve_impl(config.crf.impl) if use_crf else (None, None)
  if impl == 'reference':
    crf_reference.require('cams.crf')
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
            'bg_threshold': config.cams.bg_threshold,
            'num_classes': dataset.num_classes + 1,
            'crf': config.cams.crf_params.to_dict() if use_crf else None}
  mine = dataset.examples[jax.process_index()::jax.process_count()]
  os.makedirs(pseudo.label_dir(workdir), exist_ok=True)
  # Every label, not only those written now: the figures describe all of them (labels of an
  # earlier run are read back), so that a resumed or repeated run reports the same.
  tasks = [(ex.name, export.cam_path(workdir, ex.name),
            os.path.join(sal_root, ex.name + '.png') if sal_root else '',
            pseudo.label_path(workdir, ex.name), ex.image_path,
            ex.mask_path if ex.mask_path and os.path.exists(ex.mask_path) else '', params)
           for ex in mine]
  on_device = impl == 'jax'
  # With the CRF on the devices, the pool only reads back earlier labels.
  new = [t for t in tasks if on_device and not os.path.exists(t[3])]
  pooled = [t for t in tasks if t not in new]
  workers = min(q.num_workers or os.cpu_count() or 1, max(len(pooled), 1))
  results = {}
  cms = [np.zeros((params['num_classes'],) * 2, np.int64) for _ in range(2)]
  scored = [False, False]
  bar = console.progress(len(tasks), 'pseudo_labels')
  if workers <= 1:
    outputs = map(label_image, pooled)
    pool = None
  else:
    # spawn: the parent holds JAX's threads, which fork does not copy safely.
    pool = multiprocessing.get_context('spawn').Pool(workers)
    outputs = pool.imap_unordered(label_image, pooled, chunksize=8 if not use_crf else 1)
  if on_device:
    from gwsss_jax.crf import dense  # pylint: disable=g-import-not-at-top
    labeller = dense.make_labeller(crf_lib.params_from_config(config.cams.crf_params))
    outputs = itertools.chain(outputs, label_batch_jax(new, labeller, config.crf.batch_size))
  try:
    for name, cov, was_resized, written, cm_plain, cm_crf in outputs:
      results[name] = (cov, was_resized, written)
      for k, cm in enumerate((cm_plain, cm_crf)):
        if cm is not None:
          cms[k] += cm
          scored[k] = True
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
    cms = [np.asarray(multihost_utils.process_allgather(cm)).sum(axis=0) for cm in cms]
    scored = [bool(np.asarray(multihost_utils.process_allgather(np.array(f))).any())
              for f in scored]
  if jax.process_index() != 0:
    return {}
  images, coverage_sum, all_ignored, resized, written = totals
  print(f'[pseudo_labels] {int(written)} labels written, {int(images - written)} kept from an '
        'earlier run' + (f'; dense CRF ({crf_name})' if use_crf else ''), flush=True)
  out = {'pseudo_labels/images': int(images), 'pseudo_labels/all_ignored': int(all_ignored)}
  if sal_root:
    out['pseudo_labels/saliency_resized'] = int(resized)
  if images:
    out['pseudo_labels/mean_coverage'] = float(coverage_sum / images)
  # Ignored pixels are not counted (as eval_cams' pseudo-label mIoU).
  for k, key in enumerate(('pseudo_labels/miou_no_crf', 'pseudo_labels/miou_crf')):
    if scored[k]:
      out[key] = float(np.nanmean(metrics_lib.iou_per_class(cms[k])))
  return out
