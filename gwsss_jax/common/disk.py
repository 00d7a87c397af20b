"""A full disk as one line that says what was being written, where, and how much space is left.

Writes that fail for lack of space (ENOSPC, EDQUOT, or a library's wrapped "No space left on
device") become a `UserError`, which the entry points print as one line with a non-zero exit
status. What was written before stays valid (writes are atomic), so freeing space and running
the same command again resumes.
"""

import errno
import os
import shutil
from typing import Optional

from gwsss_jax.common.errors import UserError

_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_MESSAGE = 'No space left on device'


def is_disk_full(error: BaseException) -> bool:
  """Whether `error`, or an exception it was raised from, says the disk or quota is full."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _ERRNOS:
      return True
    if _MESSAGE in str(error) or 'Disk quota exceeded' in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def free_bytes(path: str) -> Optional[int]:
  """Free space of the filesystem holding `path` (or its nearest existing parent)."""
  path = os.path.abspath(path)
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  try:
    return shutil.disk_usage(path).free
  except OSError:
    return None


def size_text(n: Optional[int]) -> str:
  if n is None:
    return 'unknown space'
  for unit in ('B', 'KB', 'MB', 'GB'):
    if n < 1024 or unit == 'GB':
      return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
    n /= 1024
  return ''


def full_error(what: str, path: str, needed: Optional[int] = None) -> UserError:
  """The one-line error of a write of `what` to `path` that found the disk full."""
  need = f', about {size_text(needed)} needed' if needed else ''
  return UserError(f'no space left on device writing {what} to {path} '
                   f'({size_text(free_bytes(path))} left there{need}); free some space and run '
                   'the same command again: what was written before is kept')
