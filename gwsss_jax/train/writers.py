"""Metrics, progress and the NaN guard of the training loops (clu).

Only process 0 writes TensorBoard summaries; the others log to the console only. clu's writers
import TensorFlow (seconds), so they are imported where a writer is made. Without clu or
TensorFlow (`data.loader='numpy'` on a machine that has neither), the scalars go to
`<logdir>/scalars.jsonl` instead, one JSON object per write, and the progress hooks are off.
"""

import json
import math
import os
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gwsss_jax.common.errors import UserError


def create_writer(logdir: str):
  """TensorBoard events under `logdir` on process 0, nothing on the others. No console writer:
  the training loop prints its own line per interval (`progress_line`), and clu's
  `LoggingWriter` would print the same numbers a second time."""
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError as e:  # clu, or the TensorFlow its summary writer needs, is missing
    _warn_once(f'no TensorBoard summaries ({e}): scalars go to {logdir}/scalars.jsonl')
    return JsonLinesWriter(logdir if jax.process_index() == 0 else None)
  if jax.process_index() > 0:
    return metric_writers.MultiWriter([])
  return metric_writers.AsyncMultiWriter([metric_writers.SummaryWriter(logdir)])


_warned = set()


def _warn_once(message: str) -> None:
  if message not in _warned:
    _warned.add(message)
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.warning(message)


class JsonLinesWriter:
  """The part of clu's MetricWriter that the training loops use, appending
  `{"step": s, "<tag>": value, ...}` lines to `<logdir>/scalars.jsonl` (None: writes nothing).
  Each write is one line flushed at once, so an interrupted run leaves whole lines; a resumed
  run appends, so the steps between its last checkpoint and the interruption appear twice (the
  later line is the resumed run's)."""

  def __init__(self, logdir):
    self._path = None if logdir is None else os.path.join(logdir, 'scalars.jsonl')
    if self._path:
      os.makedirs(logdir, exist_ok=True)

  def write_scalars(self, step: int, scalars) -> None:
    if self._path is None:
      return
    line = {'step': int(step), **{k: float(v) for k, v in scalars.items()}}
    with open(self._path, 'a') as f:
      f.write(json.dumps(line) + '\n')

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


def periodic_hooks(logdir: str, *, num_train_steps: int, profile_steps: int) -> list:
  """`ReportProgress` (steps/s and ETA in the logs, shown with --verbose) and, when
  `profile_steps` > 0, a `Profile` of that many steps written to `logdir` (open with
  TensorBoard's profile plugin). Process 0 only. ReportProgress gets no writer: its bare
  `steps_per_sec` and `uptime` tags would break the `<stage>/<metric>` names of TensorBoard,
  where the training loop writes `<stage>/steps_per_sec` itself."""
  if jax.process_index() > 0:
    return []
  try:
    from clu import periodic_actions  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    if profile_steps > 0:
      raise UserError(f'train.profile_steps={profile_steps} needs clu ({e}): pip install clu, '
                      'or set it to 0') from None
    return []
  hooks = [periodic_actions.ReportProgress(num_train_steps=num_train_steps, every_secs=60.0)]
  if profile_steps > 0:
    hooks.append(periodic_actions.Profile(logdir=logdir, num_profile_steps=profile_steps,
                                          first_profile=10, every_secs=None, every_steps=None))
  return hooks


class NanGuard:
  """Remembers each step's loss (device arrays, no host transfer) until `check`.

  `check` runs before every checkpoint save and at each log step, so a non-finite loss stops the
  run before its state can be saved; `check_state` stops it when the state about to be saved
  has non-finite parameters or parameters whose own loss is not finite. The last checkpoint on
  disk is then the last good one.
  """

  def __init__(self, checkpoint_dir: str = '', lr_key: str = 'train.base_lr',
               latest_step: Optional[Callable[[], Optional[int]]] = None):
    self._pending = []
    self._checkpoint_dir = checkpoint_dir
    self._lr_key = lr_key
    self._latest_step = latest_step

  def add(self, step: int, loss) -> None:
    self._pending.append((step, loss))

  def check(self, to_host=np.asarray) -> None:
    """Raises UserError naming the first step whose loss is NaN or Inf."""
    pending, self._pending = self._pending, []
    for step, loss in pending:
      value = float(np.asarray(to_host(loss)))
      if not math.isfinite(value):
        self._stop(f'loss is {value} at step {step}')

  def check_state(self, step: int, finite_params: bool, own_loss: float) -> None:
    """Raises UserError when the state of `step` is not fit to be saved."""
    if not finite_params:
      self._stop(f'the parameters after step {step} are not finite; not saved')
    if not math.isfinite(own_loss):
      self._stop(f'the parameters after step {step} give a loss of {own_loss}; not saved')

  def _stop(self, what: str):
    where = ''
    if self._checkpoint_dir:
      last = self._latest_step() if self._latest_step is not None else None
      step = f'step {last} ' if last is not None else ''
      where = f'; the last good checkpoint is {step}in {self._checkpoint_dir}'
    raise UserError(f'training diverged: {what} (lower the learning rate, '
                    f'config.{self._lr_key}){where}')


class MeanMeter:
  """Means of scalar metrics over a log interval, summed on the devices (no per-step sync)."""

  def __init__(self):
    self._sums = None
    self._count = 0

  def add(self, metrics: dict) -> None:
    self._sums = metrics if self._sums is None else jax.tree.map(jnp.add, self._sums, metrics)
    self._count += 1

  def pop(self, to_host=np.asarray) -> dict:
    """The means since the last pop, as host floats."""
    if self._sums is None:
      return {}
    out = {k: float(np.asarray(to_host(v))) / self._count for k, v in self._sums.items()}
    self._sums, self._count = None, 0
    return out


def progress_line(prefix: str, step: int, total: int, scalars: dict) -> str:
  """`[prefix] step 120/900 loss=0.4123 lr/new_weight=0.0100 ...` (keys without the stage)."""
  parts = []
  for k in sorted(scalars):
    v = scalars[k]
    name = k.split('/', 1)[1] if '/' in k else k
    parts.append(f'{name}={v:.3e}' if v != 0 and abs(v) < 1e-3 else f'{name}={v:.4f}')
  return f'[{prefix}] step {step}/{total} ' + ' '.join(parts)
