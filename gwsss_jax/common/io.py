"""Atomic file writes, and the workdir's metrics: one file per stage, `metrics/<stage>.json`,
merged into the summary `metrics.json` (rebuilt from them, never read back by the pipeline)."""

import contextlib
import io
import json
import os
import re
import tempfile

import numpy as np

from gwsss_jax.common import disk
from gwsss_jax.common.errors import UserError

METRICS_FILE = 'metrics.json'
STAGE_METRICS_DIR = 'metrics'
# The figures of a metrics.json written before per-stage files existed, kept as the lowest layer.
IMPORTED = 'imported'
# eval_seg's metric keys before they took the `<stage>/<metric>` form of the other stages: read
# under the current names from the metrics files of older workdirs.
_RENAMED_METRICS = {'seg_miou': 'eval_seg/miou', 'seg_miou_no_crf': 'eval_seg/miou_no_crf',
                    'seg_oracle_miou': 'eval_seg_oracle/miou',
                    'seg_oracle_miou_no_crf': 'eval_seg_oracle/miou_no_crf'}
_RENAMED_METRIC_PREFIXES = (('seg/', 'eval_seg/'), ('seg_oracle/', 'eval_seg_oracle/'))
# The temporary names of `atomic_path`: mkstemp's 8 random characters between prefix and suffix.
_TMP_NAME = re.compile(r'^\..+\.[a-z0-9_]{8}\.tmp$')


@contextlib.contextmanager
def atomic_path(path: str):
  """Yields a temporary path beside `path`; renames it onto `path` only on success."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.',
                             suffix='.tmp')
  os.close(fd)
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def remove_stale_tmp(directory: str, recursive: bool = True) -> int:
  """Removes the temporary files that `atomic_path` left in `directory` (and below it when
  `recursive`) when their writer was killed; returns how many. Only for directories no other
  process is writing to."""
  removed = 0
  for root, _, files in os.walk(directory):
    for name in files:
      if _TMP_NAME.match(name):
        os.remove(os.path.join(root, name))
        removed += 1
    if not recursive:
      break
  return removed


def atomic_write_bytes(path: str, data: bytes) -> None:
  try:
    with atomic_path(path) as tmp:
      with open(tmp, 'wb') as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
  except OSError as e:
    if disk.is_disk_full(e):
      raise disk.full_error(os.path.basename(path), os.path.dirname(os.path.abspath(path)),
                            len(data)) from None
    raise


def atomic_write_text(path: str, text: str) -> None:
  atomic_write_bytes(path, text.encode('utf-8'))


def atomic_save_npy(path: str, obj) -> None:
  """np.save of an array or (pickled) dict, atomically."""
  buf = io.BytesIO()
  np.save(buf, obj, allow_pickle=not isinstance(obj, np.ndarray))
  atomic_write_bytes(path, buf.getvalue())


def _read_json_dict(path: str) -> dict:
  """The JSON object in `path`; UserError naming the file when it is unreadable or not one."""
  try:
    with open(path) as f:
      value = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f'unreadable metrics file {path}: {" ".join(str(e).split())}') from None
  if not isinstance(value, dict):
    raise UserError(f'unreadable metrics file {path}: not a JSON object')
  return value


def _current_metric_name(key: str) -> str:
  if key in _RENAMED_METRICS:
    return _RENAMED_METRICS[key]
  for old, new in _RENAMED_METRIC_PREFIXES:
    if key.startswith(old):
      return new + key[len(old):]
  return key


def _read_metrics_file(path: str) -> dict:
  """The metrics in `path` under their current names."""
  return {_current_metric_name(k): v for k, v in _read_json_dict(path).items()}


def _write_json(path: str, values: dict) -> None:
  atomic_write_text(path, json.dumps(values, indent=2, sort_keys=True, default=float) + '\n')


def read_metrics(workdir: str) -> dict:
  """The summary <workdir>/metrics.json ({} when absent)."""
  path = os.path.join(workdir, METRICS_FILE)
  return _read_metrics_file(path) if os.path.exists(path) else {}


def stage_metrics_path(workdir: str, stage: str) -> str:
  return os.path.join(workdir, STAGE_METRICS_DIR, stage + '.json')


def write_stage_metrics(workdir: str, stage: str, values: dict) -> None:
  """Merges `values` into <workdir>/metrics/<stage>.json (atomic). A stage that skips finished
  work returns less than it did, and keeps the figures it returned before."""
  path = stage_metrics_path(workdir, stage)
  merged = _read_metrics_file(path) if os.path.exists(path) else {}
  merged.update(values)
  _write_json(path, merged)


def rebuild_metrics(workdir: str, order=()) -> dict:
  """Writes the summary metrics.json from the per-stage files (stages in `order` first, in that
  order, then the others by name) and returns it. A workdir from before per-stage files has
  its metrics.json imported once, as metrics/imported.json."""
  directory = os.path.join(workdir, STAGE_METRICS_DIR)
  if not os.path.isdir(directory) and os.path.exists(os.path.join(workdir, METRICS_FILE)):
    _write_json(stage_metrics_path(workdir, IMPORTED), read_metrics(workdir))
  names = [f[:-len('.json')] for f in os.listdir(directory)
           if f.endswith('.json') and not f.startswith('.')] if os.path.isdir(directory) else []
  rank = {name: i for i, name in enumerate((IMPORTED,) + tuple(order))}
  merged = {}
  for name in sorted(names, key=lambda n: (rank.get(n, len(rank)), n)):
    merged.update(_read_metrics_file(stage_metrics_path(workdir, name)))
  _write_json(os.path.join(workdir, METRICS_FILE), merged)
  return merged
