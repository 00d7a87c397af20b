"""The stage contract: each `gwsss_jax.stages.<name>.run(config, workdir) -> dict` reads what
earlier stages left in `workdir`, skips work already done, and returns metrics computed over all
of its outputs (a resumed or repeated stage gives the figures of an uninterrupted one). They go
to `<workdir>/metrics/<record>.json`, from which `<workdir>/metrics.json` is rebuilt. In a
multi-process job every process runs every stage (each does its share, or nothing where process
0 does it all) and all meet at a barrier before the next.

Around the stages (`gwsss_jax.workdir`): the run holds the workdir's lock; it refuses a config
whose keys differ from those that existing outputs were made with (unless `discard_from` names
a stage whose outputs, and those of the stages after it, are deleted first); each stage records
its config keys and has its stale temporary files removed when it starts.
"""

import importlib
import json
import os
import time

import jax
from absl import logging
from jax.experimental import multihost_utils

from gwsss_jax import config as config_lib
from gwsss_jax import workdir as workdir_lib
from gwsss_jax.common import console
from gwsss_jax.common import io as gio
from gwsss_jax.data import check as data_check
from gwsss_jax.data import datasets
from gwsss_jax.evaluation import metrics as metrics_lib
from gwsss_jax.models import convert
from gwsss_jax.train import distributed as jax_distributed


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'gwsss_jax {name}')


def run(config, workdir: str, distributed: bool = False, discard_from: str = '') -> dict:
  """Validates the config, prepares the data and runs the configured stages in order.
  `discard_from`: a stage whose outputs (and those of the stages that read them) are deleted
  first, so that they are made again with this config."""
  jax_distributed.initialize(distributed)
  config_lib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  with workdir_lib.lock(workdir, jax.process_index()):
    return _run_locked(config, workdir, discard_from)


def _fetch_named_weights(config, stages) -> None:
  """Downloads and converts the weights given by name (`torchvision:vgg16`) before the first
  stage, so that a failed download stops the run at its start rather than at train_seg.
  Process 0 only: the others find the conversion in the cache (a shared filesystem)."""
  if jax.process_index() == 0:
    for stage, key, value in (('train_cls', 'model.pretrained', config.model.pretrained),
                              ('train_seg', 'seg.pretrained', config.seg.pretrained)):
      if stage in stages and value:
        convert.resolve_pretrained(value, key)
  _barrier('named weights fetched')


def _run_locked(config, workdir: str, discard_from: str) -> dict:
  stages = config_lib.stage_list(config)
  records = {s: workdir_lib.record_name(s, config) for s in stages}
  datasets.prepare(config, workdir)  # bad data settings fail before anything is discarded
  _fetch_named_weights(config, stages)
  if discard_from:
    if jax.process_index() == 0:
      gone = workdir_lib.discard_from(workdir, discard_from, config)
      print(f'[discard] deleted the outputs of {", ".join(gone)}', flush=True)
    _barrier('discard done')  # before the others check the records
  workdir_lib.check(workdir, config, records.values())
  if jax.process_index() == 0:
    workdir_lib.clean_stale_tmp(workdir)
    metrics = gio.rebuild_metrics(workdir, workdir_lib.RECORDS)
    gio.atomic_write_text(os.path.join(workdir, 'config.json'), config.to_json_best_effort(
        indent=2, sort_keys=True) + '\n')
  if 'check_data' not in stages:  # the files the stages will read, before any training step
    data_check.check(config, stages)
  for stage in stages:
    record = records[stage]
    if jax.process_index() == 0:
      removed = workdir_lib.clean_stale_tmp(workdir, record)
      if removed:
        print(f'[{stage}] removed {removed} temporary files of an unfinished earlier run',
              flush=True)
      workdir_lib.write_record(workdir, record, config)
    _barrier(f'stage {stage} ready')
    module = importlib.import_module(f'gwsss_jax.stages.{stage}')
    print(f'[{stage}] starting', flush=True)
    start = time.time()
    result = module.run(config, workdir) or {}
    # The next stage reads what every process wrote (CAMs, pseudo labels, checkpoints).
    _barrier(f'stage {stage} done')
    if jax.process_index() == 0:
      gio.write_stage_metrics(workdir, record, result)
      metrics = gio.rebuild_metrics(workdir, workdir_lib.RECORDS)
    print(f'[{stage}] done in {time.time() - start:.1f}s', flush=True)
    if console.verbose():  # the same figures as the summary table and metrics/<stage>.json
      logging.info('%s: %s', stage, json.dumps(result, default=float)[:2000])
  if jax.process_index() != 0:
    return {}
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
           ('eval_seg/miou_no_crf', 'segmentation val mIoU without CRF'),
           ('eval_seg/miou',
            'segmentation val mIoU (DeepLab on pseudo labels; with seg.crf if on)'),
           ('eval_seg_oracle/miou_no_crf', 'oracle val mIoU without CRF'),
           ('eval_seg_oracle/miou',
            'oracle val mIoU (DeepLab on ground truth; with seg.crf if on)'))


def summary_table(metrics: dict) -> str:
  """The headline figures found in metrics.json, as a Markdown table."""
  rows = [(title, float(metrics[key])) for key, title in SUMMARY if key in metrics]
  return metrics_lib.format_table(rows, ('summary', 'value'))

