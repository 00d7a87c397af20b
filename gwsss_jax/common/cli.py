"""What every command-line entry point shares: errors as one line and exit status 2."""

import os
import sys

from absl import app

from gwsss_jax.common import disk
from gwsss_jax.common.errors import UserError


def fail(message: str):
  """Prints `error: message` on stderr and exits with status 2."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def run(main, flags_parser=None):
  """absl's `app.run`, with a UserError ending the program as one line, not a traceback."""
  try:
    if flags_parser is None:
      app.run(main)
    else:
      app.run(main, flags_parser=flags_parser)
  except UserError as e:
    fail(str(e))
  except OSError as e:  # a full disk met by a write that does not name itself
    if not disk.is_disk_full(e):
      raise
    fail(str(disk.full_error('a file', e.filename or os.getcwd())))
