"""Orbax checkpoints of the train state, resumable after any interruption.

A checkpoint holds the whole state pytree (params, batch_stats, opt_state, step, root PRNG
key); the input pipeline is deterministic in (seed, epoch, batch), so its position is the step.
Orbax writes each step into a temporary directory and renames it only once every array is on
disk (and every process has finished), so a run killed mid-save (even `kill -9`) leaves the
previous checkpoint as the latest complete one; the half-written directory is removed,
synchronously, when the next `Checkpointer` opens the directory (orbax's own cleanup runs in a
background thread that `close()` does not await, so two managers opened one after the other on
one directory raced to delete the same files).

A step that cannot be read back (a truncated data file, a deleted `_METADATA`) is told apart
from one written for another model (its recorded tree or shapes differ from the template):
`restore_latest` sets the first aside as `<step>.corrupt` with a warning and falls back to the
newest readable step; the second stops with the differing leaves named.

Arrays are saved unsharded (the state is replicated), and restored as host arrays that the
caller replicates onto whatever devices it has: a checkpoint written on N devices restores on M.
Every process must call `save` (orbax coordinates the hosts; only the primary one writes
replicated arrays).
"""

import contextlib
import logging as py_logging
import os
import shutil
import sys
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from gwsss_jax.common import disk
from gwsss_jax.common.errors import UserError


class CorruptCheckpoint(UserError):
  """A checkpoint whose files cannot be read back (truncated, deleted metadata)."""


def _warn(message: str) -> None:
  logging.warning('%s', message)
  print(f'warning: {message}', file=sys.stderr, flush=True)


def _differences(stored, template, partial: bool = False) -> list:
  """'path: checkpoint shape vs model shape' for each leaf where the stored tree and
  `template` disagree (missing on either side, or another shape; with `partial`, leaves of
  the checkpoint that `template` leaves out are fine)."""
  def shapes(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {'/'.join(str(getattr(k, 'key', getattr(k, 'idx', getattr(k, 'name', k))))
                     for k in path): tuple(getattr(leaf, 'shape', ()) or ())
            for path, leaf in flat}
  have, want = shapes(stored), shapes(template)
  out = [f'{k}: in the model, not in the checkpoint' for k in sorted(want.keys() - have.keys())]
  if not partial:
    out += [f'{k}: in the checkpoint, not in the model'
            for k in sorted(have.keys() - want.keys())]
  out += [f'{k}: shape {have[k]} in the checkpoint, {want[k]} in the model'
          for k in sorted(want.keys() & have.keys()) if have[k] != want[k]]
  return out


class _QuietOrbax(py_logging.Filter):
  """Drops orbax's INFO records (a dozen lines per save) from the absl log; warnings pass."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or 'orbax' not in record.pathname


_QUIET = _QuietOrbax()

_ITEM = 'default'  # the manager's item directory inside a step
_TMP_SUFFIX = '.orbax-checkpoint-tmp'  # orbax's marker of a step directory not yet finalized


def remove_unfinished(directory: str) -> list:
  """Deletes the half-written step directories a killed save left in `directory`.

  Runs on the primary process only, then waits for every process, so no host opens the manager
  while another still deletes. Returns the names removed.
  """
  removed = []
  if jax.process_index() == 0 and os.path.isdir(directory):
    for name in sorted(os.listdir(directory)):
      if _TMP_SUFFIX in name:
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
        removed.append(name)
    if removed:
      logging.info('removed unfinished checkpoints in %s: %s', directory, removed)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f'checkpoint_cleanup:{directory}')
  return removed


class Checkpointer:
  """A `CheckpointManager` over one state pytree, saving asynchronously."""

  def __init__(self, directory: str, *, max_to_keep: Optional[int] = 3,
               save_interval_steps: int = 1, asynchronous: bool = True):
    self.directory = os.path.abspath(directory)
    logging.get_absl_handler().addFilter(_QUIET)
    remove_unfinished(self.directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
            enable_async_checkpointing=asynchronous, cleanup_tmp_directories=False, create=True),
        item_handlers=ocp.StandardCheckpointHandler())

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Starts saving `state` at `step` (returns at once; the write continues in background).

    `force` saves even off the `save_interval_steps` grid (epoch ends, the final step).
    A step already on disk is skipped (a resumed run reaching it again).
    """
    if step in self._manager.all_steps():
      return False
    # Checked before orbax starts: a full disk met by its writer threads gives a hundred
    # tracebacks. The arrays' size bounds what is written (the previous step stays until then).
    needed = sum(int(getattr(x, 'nbytes', 0)) for x in jax.tree.leaves(state))
    with self._disk_full_as_one_line('a checkpoint'):
      self._manager.wait_until_finished()  # the previous save's files count against the space
    free = disk.free_bytes(self.directory)
    if free is not None and free < needed:
      raise disk.full_error(f'the checkpoint of step {step}', self.directory, needed)
    with self._disk_full_as_one_line(f'the checkpoint of step {step}'):
      return self._manager.save(step, args=ocp.args.StandardSave(state), force=force)

  @contextlib.contextmanager
  def _disk_full_as_one_line(self, what: str):
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      if disk.is_disk_full(e):
        raise disk.full_error(what, self.directory) from None
      raise

  def restore(self, template: Any, step: Optional[int] = None, *, partial: bool = False) -> Any:
    """The state at `step` (default: the latest) as host numpy arrays shaped like `template`.

    `template` may hold arrays or `jax.ShapeDtypeStruct`s (e.g. from `jax.eval_shape`);
    with `partial` it names a part of the state ({'params', 'batch_stats'} for inference),
    and only that part is read (no optimizer template needed).
    Raises `CorruptCheckpoint` when the step cannot be read, and a plain `UserError` when it was
    written for another model (its recorded tree or shapes differ from `template`).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise UserError(f'no checkpoint in {self.directory}')
    where = os.path.join(self.directory, str(step))
    try:
      stored = self._manager.item_metadata(step)
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpoint(f'checkpoint {where} is unreadable: its metadata: {e}') from e
    tree = getattr(stored, 'tree', stored)
    if tree is None:  # orbax answers None for a missing or unparsable _METADATA
      raise CorruptCheckpoint(f'checkpoint {where} is unreadable: no valid _METADATA')
    differences = _differences(tree, template, partial)
    if differences:
      raise UserError(f'checkpoint {where} does not match the model of this config (was it '
                      f'written with other model settings?): {"; ".join(differences[:3])}')
    target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), template)
    try:
      if partial:
        return ocp.PyTreeCheckpointer().restore(
            os.path.join(where, _ITEM), args=ocp.args.PyTreeRestore(
                item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True))
      return self._manager.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as e:  # pylint: disable=broad-except
      message = ' '.join(str(e).split())[:300]
      raise CorruptCheckpoint(f'checkpoint {where} is unreadable (corrupt or truncated '
                              f'files): {message}') from e

  def restore_latest(self, template: Any, *,
                     partial: bool = False) -> tuple[Optional[int], Any]:
    """(step, state) of the newest readable checkpoint, or (None, None) when there is none.

    A corrupt newer step is moved aside to `<step>.corrupt` (kept for inspection, out of the
    way of the step that the resumed run saves again) with a warning naming it; a checkpoint
    of another model stops with `restore`'s UserError.
    """
    for step in sorted(self.all_steps(), reverse=True):
      try:
        return step, self.restore(template, step, partial=partial)
      except CorruptCheckpoint as e:
        older = [s for s in self.all_steps() if s < step]
        fallback = f'resuming from step {max(older)}' if older else 'starting from step 0'
        _warn(f'{e}; moved aside to {step}.corrupt, {fallback}')
        self._set_aside(step)
    return None, None

  def _set_aside(self, step: int) -> None:
    if jax.process_index() == 0:
      source = os.path.join(self.directory, str(step))
      target = f'{source}.corrupt'
      if os.path.exists(target):
        shutil.rmtree(target)
      os.rename(source, target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f'checkpoint_set_aside:{self.directory}:{step}')
    self._manager.reload()

  def wait(self) -> None:
    """Blocks until the last save is complete on disk."""
    with self._disk_full_as_one_line('a checkpoint'):
      self._manager.wait_until_finished()

  def close(self) -> None:
    with self._disk_full_as_one_line('a checkpoint'):
      self._manager.close()
