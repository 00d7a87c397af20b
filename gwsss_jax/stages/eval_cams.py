"""Stage `eval_cams`: CAM and pseudo-label quality on the training images with ground truth.

As WSSS papers report it (one dataset-level confusion matrix, `evaluation.metrics`):
- CAM mIoU for each exported readout (graph, intermediate, ensemble with group inference; the
  ensemble with OAA) at every background threshold of `cams.bg_sweep` (IRNet's eval_cam: label =
  argmax over [threshold, class maps]); the best threshold and its mIoU are reported;
- pseudo-label mIoU (ignore pixels not counted) and coverage (fraction of labelled pixels);
- per-class IoU, precision and recall of both (classes named after the dataset).
A Markdown table is printed; the metrics go to metrics.json. Picture grids of `cams.num_vis`
images are written to `<workdir>/vis/<name>.png`.
"""

import multiprocessing
import os

import numpy as np

from gwsss_jax.cams import export
from gwsss_jax.cams import pseudo
from gwsss_jax.cams import vis
from gwsss_jax.common import console
from gwsss_jax.common.errors import UserError
from gwsss_jax.data import datasets
from gwsss_jax.data import palette
from gwsss_jax.evaluation import metrics

PREFIX = 'eval_cams/'


def sweep_labels(cams, keys, thresholds):
  """[T, H, W] uint8: IRNet's threshold labelling (`pseudo.threshold_label`) at each threshold,
  from one max/argmax over the class maps (a class wins where its map exceeds the threshold)."""
  cams = np.asarray(cams, np.float32)
  if cams.shape[0] == 0:
    return np.zeros((len(thresholds),) + cams.shape[1:], np.uint8)
  best = cams.max(0)
  fg = pseudo.label_values(keys)[1:][np.argmax(cams, axis=0)]
  return np.stack([np.where(best > t, fg, 0).astype(np.uint8) for t in thresholds])


def evaluate_image(task) -> dict:
  """Worker: confusion matrices of one image (per readout and threshold; pseudo label).

  task: (cam file, mask file, pseudo-label file, thresholds, classes with background[,
  data.skip_bad]).
  """
  cam_file, mask_file, label_file, thresholds, num_classes, *skip_bad = task
  record = export.load_record(cam_file)
  gt = palette.read_mask(mask_file, num_classes - 1, bool(skip_bad and skip_bad[0]))
  if tuple(record['high_res'].shape[1:]) != gt.shape:
    raise UserError(f'{cam_file}: maps of size {record["high_res"].shape[1:]} but the ground '
                    f'truth {mask_file} is {gt.shape}; re-export the CAMs')
  out = {'source': record.get('source', 'ensemble')}
  for r in export.readouts(record):
    preds = sweep_labels(export.high_res(record, r), record['keys'], thresholds)
    out[f'cam/{r}'] = np.stack([metrics.confusion_matrix(p, gt, num_classes) for p in preds])
  if os.path.exists(label_file):
    label = palette.read_label_png(label_file)
    out['pseudo'] = metrics.confusion_matrix(label, gt, num_classes)
    out['labelled'] = int(np.count_nonzero(label != pseudo.IGNORE))
    out['pixels'] = int(label.size)
  return out


def accumulate(tasks, workers: int) -> dict:
  """Runs `evaluate_image` over the tasks (on `workers` processes) and sums its outputs."""
  total = {'images': 0, 'pseudo_images': 0}
  bar = console.progress(len(tasks), 'eval_cams')

  def add(res):
    bar.update(1)
    total['images'] += 1
    total['source'] = res.pop('source')
    total['pseudo_images'] += 'pseudo' in res
    for k, v in res.items():
      total[k] = total[k] + v if k in total else v

  with bar:
    if workers <= 1:
      for res in map(evaluate_image, tasks):
        add(res)
      return total
    with multiprocessing.get_context('spawn').Pool(workers) as pool:
      for res in pool.imap_unordered(evaluate_image, tasks, chunksize=8):
        add(res)
  return total


def write_pictures(config, workdir: str, dataset, examples) -> list:
  """Grids of `cams.num_vis` images (seeded choice, images with ground truth first)."""
  rng = np.random.default_rng(config.seed)
  pool = examples if examples else dataset.examples
  pool = [ex for ex in pool if os.path.exists(export.cam_path(workdir, ex.name))]
  chosen = [pool[i] for i in sorted(rng.permutation(len(pool))[:config.cams.num_vis])]
  out_dir = os.path.join(workdir, 'vis')
  written = []
  for ex in chosen:
    record = export.load_record(export.cam_path(workdir, ex.name))
    image = export.load_rgb(ex.image_path)
    gt = palette.read_label_png(ex.mask_path) if ex.mask_path else None
    label_file = pseudo.label_path(workdir, ex.name)
    label = palette.read_label_png(label_file) if os.path.exists(label_file) else None
    cams = {r: export.high_res(record, r) for r in export.readouts(record)}
    grid = vis.make_grid(image, gt, label, cams, record['keys'], dataset.class_names)
    path = os.path.join(out_dir, ex.name + '.png')
    vis.save_rgb_png(path, grid)
    written.append(path)
  return written


def summarize(total: dict, thresholds, class_names) -> tuple:
  """(metrics dict, printed Markdown tables) from the sums of `accumulate`."""
  names = ('background',) + tuple(class_names)
  out = {PREFIX + 'images': total['images']}
  source = total['source']
  rows, best_cm = [], {}
  for key in sorted(k for k in total if k.startswith('cam/')):
    r = key[len('cam/'):]
    mious = [float(np.nanmean(metrics.iou_per_class(cm))) for cm in total[key]]
    b = int(np.nanargmax(mious))
    best_cm[r] = total[key][b]
    out[f'{PREFIX}cam_miou/{r}'] = mious[b]
    out[f'{PREFIX}cam_best_threshold/{r}'] = float(thresholds[b])
    for t, m in zip(thresholds, mious):
      out[f'{PREFIX}cam_miou_sweep/{r}/{t:.2f}'] = m
    rows.append((f'CAM ({r})', float(thresholds[b]), mious[b], '-'))
  out[PREFIX + 'cam_miou'] = out[f'{PREFIX}cam_miou/{source}']
  out[PREFIX + 'cam_best_threshold'] = out[f'{PREFIX}cam_best_threshold/{source}']
  cam_pfx = PREFIX + 'cam/'
  out.update(metrics.segmentation_metrics(best_cm[source], names, prefix=cam_pfx))
  headers = ('class', f'CAM IoU ({source})')
  per_class = [(n, out[f'{cam_pfx}iou_per_class/{i:02d}_{n}']) for i, n in enumerate(names)]
  if total['pseudo_images']:
    pfx = PREFIX + 'pseudo_label/'
    seg = metrics.segmentation_metrics(total['pseudo'], names, prefix=pfx)
    out.update(seg)
    out[PREFIX + 'pseudo_label_miou'] = seg[pfx + 'mean_iou']
    out[PREFIX + 'pseudo_label_coverage'] = total['labelled'] / max(total['pixels'], 1)
    out[PREFIX + 'pseudo_label_images'] = total['pseudo_images']
    rows.append(('pseudo labels', '-', out[PREFIX + 'pseudo_label_miou'],
                 out[PREFIX + 'pseudo_label_coverage']))
    per_class = [row + (seg[f'{pfx}iou_per_class/{i:02d}_{n}'],
                        seg[f'{pfx}precision_per_class/{i:02d}_{n}'],
                        seg[f'{pfx}recall_per_class/{i:02d}_{n}'])
                 for i, (n, row) in enumerate(zip(names, per_class))]
    headers += ('pseudo IoU', 'pseudo precision', 'pseudo recall')
  tables = [metrics.format_table(rows, ('', 'best bg threshold', 'mIoU', 'coverage')),
            metrics.format_table(per_class, headers)]
  return out, '\n\n'.join(tables)


def run(config, workdir: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top

  if jax.process_index() != 0:
    return {}
  dataset = datasets.load_split(config, config.data.train_split)
  examples = [ex for ex in dataset.examples if ex.mask_path and os.path.exists(ex.mask_path)]
  thresholds = tuple(float(t) for t in config.cams.bg_sweep)
  if not thresholds:
    raise UserError('config.cams.bg_sweep is empty: give at least one background threshold')
  num_classes = dataset.num_classes + 1
  tasks = [(export.cam_path(workdir, ex.name), ex.mask_path,
            pseudo.label_path(workdir, ex.name), thresholds, num_classes,
            config.data.skip_bad) for ex in examples]
  workers = min(config.pseudo.num_workers or os.cpu_count() or 1, max(len(tasks), 1))
  pictures = write_pictures(config, workdir, dataset, examples)
  if not tasks:
    print(f'[eval_cams] no ground-truth masks in split {config.data.train_split!r}: '
          f'only {len(pictures)} pictures written')
    return {PREFIX + 'images': 0}
  out, table = summarize(accumulate(tasks, workers), thresholds, dataset.class_names)
  print(table, flush=True)
  out[PREFIX + 'pictures'] = len(pictures)
  return out
