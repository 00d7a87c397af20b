"""The stage contract: each `gwsss_jax.stages.<name>.run(config, workdir) -> dict` reads what
earlier stages left in `workdir`, skips work already done, and returns metrics that are merged
into `<workdir>/metrics.json`. In a multi-process job every process runs every stage (each does
its share, or nothing where process 0 does it all) and all meet at a barrier before the next."""

import importlib
import json
import os
import time

import jax
from absl import logging
from jax.experimental import multihost_utils

from gwsss_jax import config as config_lib
from gwsss_jax.common import io as gio
from gwsss_jax.data import datasets
from gwsss_jax.evaluation import metrics as metrics_lib
from gwsss_jax.train import distributed as jax_distributed


def run(config, workdir: str, distributed: bool = False) -> dict:
  """Validates the config, prepares the data and runs the configured stages in order."""
  jax_distributed.initialize(distributed)
  config_lib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  datasets.prepare(config, workdir)
  if jax.process_index() == 0:
    gio.atomic_write_text(os.path.join(workdir, 'config.json'), config.to_json_best_effort(
        indent=2, sort_keys=True) + '\n')
  metrics = gio.read_metrics(workdir)
  for stage in config_lib.stage_list(config):
    module = importlib.import_module(f'gwsss_jax.stages.{stage}')
    print(f'[{stage}] starting', flush=True)
    start = time.time()
    result = module.run(config, workdir) or {}
    if jax.process_count() > 1:
      # The next stage reads what every process wrote (CAMs, pseudo labels, checkpoints).
      multihost_utils.sync_global_devices(f'gwsss_jax stage {stage} done')
    if jax.process_index() == 0:
      metrics = gio.update_metrics(workdir, result)
    print(f'[{stage}] done in {time.time() - start:.1f}s', flush=True)
    logging.info('%s: %s', stage, json.dumps(result, default=float)[:2000])
  if jax.process_index() == 0:
    print(summary_table(metrics), flush=True)
    print(f'workdir: {os.path.abspath(workdir)} (metrics.json, vis/, tensorboard/)', flush=True)
  return metrics


# (metrics.json key, row title) of the summary that ends every run.
SUMMARY = (('train_cls/mAP', 'classification mAP (held-out)'),
           ('eval_cams/cam_miou', 'CAM mIoU (best background threshold)'),
           ('eval_cams/cam_best_threshold', 'CAM best background threshold'),
           ('eval_cams/pseudo_label_miou', 'pseudo-label mIoU (train)'),
           ('eval_cams/pseudo_label_coverage', 'pseudo-label coverage'),
           ('pseudo_labels/miou_no_crf', 'pseudo-label mIoU without CRF (pseudo_labels)'),
           ('pseudo_labels/miou_crf', 'pseudo-label mIoU with CRF (cams.crf)'),
           ('seg_miou_no_crf', 'segmentation val mIoU without CRF'),
           ('seg_miou', 'segmentation val mIoU (DeepLab on pseudo labels; with seg.crf if on)'),
           ('seg_oracle_miou_no_crf', 'oracle val mIoU without CRF'),
           ('seg_oracle_miou', 'oracle val mIoU (DeepLab on ground truth; with seg.crf if on)'))


def summary_table(metrics: dict) -> str:
  """The headline figures found in metrics.json, as a Markdown table."""
  rows = [(title, float(metrics[key])) for key, title in SUMMARY if key in metrics]
  return metrics_lib.format_table(rows, ('summary', 'value'))

