"""The console: one line per log interval, progress bars with an ETA, library logs kept quiet.

- `line` prints a line on stdout without tearing a progress bar drawn on stderr.
- `progress` is a tqdm bar on stderr, drawn only when stderr is a terminal and not under CI
  (`$CI` set, as CI services do): logs and captured output get the lines alone.
- `configure(verbose)` drops the INFO records of other packages (clu's LoggingWriter, orbax,
  jax's backend probing) unless `verbose`; gwsss_jax's own INFO lines and every warning stay.
TensorBoard is not affected: the metric writers receive everything.
"""

import logging
import os
import sys

from tqdm import tqdm

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_verbose = False


class _QuietLibraries(logging.Filter):
  """Passes warnings and above, and gwsss_jax's own records."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or record.pathname.startswith(_PACKAGE_DIR)


_FILTER = _QuietLibraries()


def configure(verbose: bool) -> None:
  """Installs (or, when `verbose`, removes) the library filter on absl's handler, which
  `absl.app.run` attaches to the root logger: every Python logger's records pass through it."""
  global _verbose
  _verbose = verbose
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  handler = absl_logging.get_absl_handler()
  handler.removeFilter(_FILTER)
  if not verbose:
    handler.addFilter(_FILTER)


def verbose() -> bool:
  return _verbose


def bars_enabled() -> bool:
  """On a terminal, outside CI, and on process 0 only (once JAX is imported: the stages are
  the ones that import it)."""
  jax = sys.modules.get('jax')
  if jax is not None and jax.process_index() > 0:
    return False
  if not sys.stderr.isatty() or os.environ.get('CI'):
    return False
  try:  # a terminal of width 0 (some container shells) would get empty lines, not a bar
    return os.get_terminal_size(sys.stderr.fileno()).columns > 0
  except (AttributeError, OSError, ValueError):
    return True


def progress(total: int, desc: str, unit: str = 'img', initial: int = 0):
  """A tqdm bar with rate and ETA; a no-op object when `bars_enabled` is false."""
  return tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True,
              disable=not bars_enabled())


def line(text: str) -> None:
  """Prints `text` on stdout; a progress bar on the terminal is redrawn below it."""
  tqdm.write(text, file=sys.stdout)
  sys.stdout.flush()
