"""Stage `eval_seg`: the trained segmentation network on `config.data.val_split`.

Every image is segmented at full resolution (multi-scale `seg.eval_scales` and mirror
`seg.eval_flip` inference average softmax probabilities), written as a palette PNG to
`<workdir>/seg_predictions/<name>.png` (`seg_oracle_predictions` for the oracle run) and, where
the split has ground truth, counted into one confusion matrix over all images: mIoU
(`eval_seg/miou` / `eval_seg_oracle/miou`) and the per-class IoU table with class names. A VOC
split without masks (test) is written in the layout of the official evaluation server instead:
`<workdir>/results/VOC2012/Segmentation/comp6_test_cls/<name>.png` (archive `results/` and
upload it).

Dense CRF (`seg.crf=True`, DeepLab-v2's post-processing with `seg.crf_params`, unaries
-log(softmax)): by pydensecrf2 in a CPU worker pool (`crf.impl='reference'`) or on the devices in
the same batches as the network (`crf.impl='jax'`; 'auto' picks: `crf.resolve_impl`). The
written predictions are then the CRF's; with ground truth, the predictions without it also go to `<predictions>/no_crf/` and the mIoU of
both is reported (`eval_seg/miou` with, `eval_seg/miou_no_crf` without; `eval_seg_oracle/*`
alike).

Resumable: predictions already on disk from the same checkpoint and inference settings
(`manifest.json` beside them) are read back instead of recomputed.
"""

import json
import multiprocessing
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gwsss_jax.common import console
from gwsss_jax.common import io as gio
from gwsss_jax import crf as crf_lib
from gwsss_jax.crf import dense as crf_dense
from gwsss_jax.crf import reference as crf_reference
from gwsss_jax.data import core
from gwsss_jax.data import datasets
from gwsss_jax.data import input_pipeline
from gwsss_jax.data import palette
from gwsss_jax.evaluation import metrics as metrics_lib
from gwsss_jax.seg import common
from gwsss_jax.seg import inference
from gwsss_jax.train import artifact

MANIFEST = 'manifest.json'
VOC_TEST_LAYOUT = os.path.join('VOC2012', 'Segmentation', 'comp6_test_cls')


def _crf_reference_task(task):
  """Worker: DeepLab's CRF on one image (probabilities [h, w, K], rgb [h, w, 3])."""
  probs, rgb, params = task
  return crf_reference.from_probs(probs.transpose(2, 0, 1), rgb, params).astype(np.uint8)


def output_dir(config, workdir: str, has_masks: bool) -> str:
  names = common.run_names(config.seg.oracle)
  if not has_masks and config.data.name in ('voc', 'tfds_voc'):
    return os.path.join(workdir, names.results, VOC_TEST_LAYOUT)
  return os.path.join(workdir, names.predictions)


def _settings(config, step: int) -> dict:
  g = config.seg
  out = {'checkpoint_step': int(step), 'eval_scales': [float(s) for s in g.eval_scales],
         'eval_flip': bool(g.eval_flip), 'split': config.data.val_split}
  if g.crf:  # both implementations give the same labels (to float rounding)
    out['crf'] = g.crf_params.to_dict()
  return out


def prepare_output(directory: str, settings: dict, examples) -> None:
  """Removes the predictions of `examples` made with other settings (another checkpoint,
  scales, ...) and records `settings`, so that what remains on disk can be reused."""
  path = os.path.join(directory, MANIFEST)
  if os.path.exists(path):
    with open(path) as f:
      if json.load(f) == settings:
        return
  for ex in examples:
    stale = os.path.join(directory, ex.name + '.png')
    if os.path.exists(stale):
      os.remove(stale)
  gio.atomic_write_text(path, json.dumps(settings, indent=2) + '\n')


def _local_sharding(batch_size: int):
  """Batch rows split over this host's devices when they divide the batch, else device 0."""
  devices = jax.local_devices()
  if len(devices) > 1 and batch_size % len(devices) == 0:
    mesh = Mesh(np.asarray(devices), ('data',))
    return NamedSharding(mesh, P('data')), NamedSharding(mesh, P())
  return devices[0], devices[0]


def run(config, workdir: str) -> dict:
  g = config.seg
  names = common.run_names(g.oracle)
  use_crf = bool(g.crf)
  impl, crf_name = crf_lib.resolve_impl(config.crf.impl) if use_crf else (None, None)
  if impl == 'reference':
    crf_reference.require('seg.crf')
  module, variables, info = artifact.load(common.checkpoint_dir(config, workdir),
                                          artifact.SEGMENTER, config)
  step = info['step']
  dataset = datasets.load_split(config, config.data.val_split)
  class_names = ('background',) + tuple(dataset.class_names)
  has_masks = all(ex.mask_path for ex in dataset.examples)
  if has_masks:
    datasets.check_mask_values(dataset, config.data)
  directory = output_dir(config, workdir, has_masks)
  os.makedirs(directory, exist_ok=True)
  if jax.process_index() == 0:
    prepare_output(directory, _settings(config, step), dataset.examples)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('eval_seg: predictions directory ready')
  mine = core.Dataset(dataset.examples[jax.process_index()::jax.process_count()],
                          dataset.class_names, dataset.split)
  done = {ex.name for ex in mine.examples
          if os.path.exists(os.path.join(directory, ex.name + '.png'))}
  todo = core.Dataset([ex for ex in mine.examples if ex.name not in done],
                          dataset.class_names, dataset.split)

  num_classes = g.num_classes
  plain_dir = os.path.join(directory, 'no_crf')  # with the CRF: its input, for the comparison
  if use_crf and has_masks:
    os.makedirs(plain_dir, exist_ok=True)
  cm = np.zeros((num_classes, num_classes), np.int64)
  cm_plain = np.zeros_like(cm)
  for ex in mine.examples:
    if ex.name in done and has_masks:
      gt = palette.read_mask(ex.mask_path, config.data.num_classes, skip_bad=True)
      cm += metrics_lib.confusion_matrix(
          palette.read_label_png(os.path.join(directory, ex.name + '.png')), gt, num_classes)
      if use_crf:
        cm_plain += metrics_lib.confusion_matrix(
            palette.read_label_png(os.path.join(plain_dir, ex.name + '.png')), gt, num_classes)

  if len(todo):
    canvas = inference.canvas_size(input_pipeline.image_sizes(dataset))
    # `todo` is already this process's share: the iterator must not split it again.
    batches = input_pipeline.eval_iterator(todo, config, batch_size=g.eval_batch_size,
                                           pad_to=canvas, normalization=info['normalization'],
                                           process_index=0, process_count=1,
                                           with_masks=has_masks, with_rgb=use_crf)
    predict = inference.make_predict_fn(module, tuple(g.eval_scales), g.eval_flip,
                                        with_probs=use_crf)
    data_sharding, replicated = _local_sharding(g.eval_batch_size)
    variables = jax.device_put(variables, replicated)
    crf_params = crf_lib.params_from_config(g.crf_params)
    on_device = impl == 'jax'
    pool = None
    if on_device:
      labeller = crf_dense.make_labeller(crf_params)
      unary_fn = jax.jit(crf_dense.unary_from_probs)
    elif use_crf:
      workers = min(config.pseudo.num_workers or os.cpu_count() or 1, g.eval_batch_size)
      if workers > 1:  # spawn: the parent holds JAX's threads, which fork does not copy safely
        pool = multiprocessing.get_context('spawn').Pool(workers)
    bar = console.progress(len(todo), names.eval)
    try:
      for batch in batches:
        valid = np.flatnonzero(np.asarray(batch['valid']))
        out = predict(variables, jax.device_put(batch['images'], data_sharding))
        plain = refined = None
        if not use_crf:
          refined = np.asarray(out)
        elif on_device:
          plain = np.asarray(out[0])
          refined = np.asarray(labeller(unary_fn(out[1]), batch['rgb'],
                                        np.asarray(batch['hw'], np.int32)))
        else:
          plain = np.asarray(out[0])
          probs = np.asarray(out[1])
          tasks = [(probs[i, :batch['hw'][i][0], :batch['hw'][i][1]],
                    batch['rgb'][i, :batch['hw'][i][0], :batch['hw'][i][1]], crf_params)
                   for i in valid]
          results = pool.map(_crf_reference_task, tasks) if pool else map(_crf_reference_task,
                                                                             tasks)
          refined = np.zeros_like(plain)
          for i, r in zip(valid, results):
            refined[i, :r.shape[0], :r.shape[1]] = r
        for i in valid:
          ex = todo.examples[int(batch['index'][i])]
          h, w = (int(v) for v in batch['hw'][i])
          pred = refined[i, :h, :w]
          gt = batch['masks'][i, :h, :w]
          if use_crf and has_masks:
            palette.save_label_png(os.path.join(plain_dir, ex.name + '.png'), plain[i, :h, :w])
            cm_plain += metrics_lib.confusion_matrix(plain[i, :h, :w], gt, num_classes)
          palette.save_label_png(os.path.join(directory, ex.name + '.png'), pred)
          if has_masks:
            cm += metrics_lib.confusion_matrix(pred, gt, num_classes)
          bar.update(1)
    finally:
      if pool is not None:
        pool.terminate()
      bar.close()

  if jax.process_count() > 1:
    cm = np.asarray(multihost_utils.process_allgather(cm)).sum(axis=0)
    cm_plain = np.asarray(multihost_utils.process_allgather(cm_plain)).sum(axis=0)
  if jax.process_index() != 0:
    return {}
  print(f'[eval_seg] {len(dataset)} predictions in {directory} (checkpoint step {step})',
        flush=True)
  if not has_masks:
    return {f'{names.eval}/num_predictions': len(dataset)}
  out = metrics_lib.segmentation_metrics(cm, class_names, prefix=f'{names.eval}/')
  iou = metrics_lib.iou_per_class(cm)
  miou = f'{names.eval}/miou'  # the headline figure (= mean_iou), beside miou_no_crf
  out[miou] = out[f'{names.eval}/mean_iou']
  if use_crf:
    out[miou + '_no_crf'] = float(np.nanmean(metrics_lib.iou_per_class(cm_plain)))
  rows = [(i, n, float(v)) for i, (n, v) in enumerate(zip(class_names, iou))]
  rows.append(('', 'mean', out[miou]))
  table = metrics_lib.format_table(rows, ('#', 'class', 'IoU'))
  title = (f'{"Oracle (ground-truth)" if g.oracle else "Pseudo-label"} DeepLab on '
           f'{config.data.val_split}, checkpoint step {step}, scales {tuple(g.eval_scales)}, '
           f'flip {bool(g.eval_flip)}')
  if use_crf:
    title += (f", dense CRF ({crf_name}); without it: mIoU "
              f"{out[miou + '_no_crf']:.4f}")
  report = f'### {title}\n\n{table}\n'
  print(report, flush=True)
  gio.atomic_write_text(os.path.join(workdir, names.iou_table), report)
  return out
