"""Atomic file writes and the workdir's metrics.json."""

import contextlib
import io
import json
import os
import tempfile

import numpy as np

from gwsss_jax.common import disk

METRICS_FILE = 'metrics.json'


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


def read_metrics(workdir: str) -> dict:
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def update_metrics(workdir: str, values: dict) -> dict:
  """Merges `values` into <workdir>/metrics.json (atomic) and returns the whole dict."""
  metrics = read_metrics(workdir)
  metrics.update(values)
  atomic_write_text(os.path.join(workdir, METRICS_FILE),
                    json.dumps(metrics, indent=2, sort_keys=True, default=float) + '\n')
  return metrics
