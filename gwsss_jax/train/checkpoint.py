"""Orbax checkpoints of the train state, resumable after any interruption.

A checkpoint holds the whole state pytree (params, batch_stats, opt_state, step, root PRNG
key); the input pipeline is deterministic in (seed, epoch, batch), so its position is the step.
Orbax writes each step into a temporary directory and renames it only once every array is on
disk (and every process has finished), so a run killed mid-save (even `kill -9`) leaves the
previous checkpoint as the latest complete one; the half-written directory is removed,
synchronously, when the next `Checkpointer` opens the directory (orbax's own cleanup runs in a
background thread that `close()` does not await, so two managers opened one after the other on
one directory raced to delete the same files).

Arrays are saved unsharded (the state is replicated), and restored as host arrays that the
caller replicates onto whatever devices it has: a checkpoint written on N devices restores on M.
Every process must call `save` (orbax coordinates the hosts; only the primary one writes
replicated arrays).
"""

import logging as py_logging
import os
import shutil
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from gwsss_jax.common.errors import UserError


class _QuietOrbax(py_logging.Filter):
  """Drops orbax's INFO records (a dozen lines per save) from the absl log; warnings pass."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or 'orbax' not in record.pathname


_QUIET = _QuietOrbax()

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
            enable_async_checkpointing=asynchronous, cleanup_tmp_directories=False, create=True))

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
    return self._manager.save(step, args=ocp.args.StandardSave(state), force=force)

  def restore(self, template: Any, step: Optional[int] = None) -> Any:
    """The state at `step` (default: the latest) as host numpy arrays shaped like `template`.

    `template` may hold arrays or `jax.ShapeDtypeStruct`s (e.g. from `jax.eval_shape`).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise UserError(f'no checkpoint in {self.directory}')
    target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), template)
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(target))
    except (ValueError, KeyError) as e:
      raise UserError(f'checkpoint {self.directory}/{step} does not match the model of this '
                      f'config (was it written with other model settings?): {e}') from e

  def wait(self) -> None:
    """Blocks until the last save is complete on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
