"""Runs the pipeline: `python -m gwsss_jax.main --config=configs/voc.py --workdir=DIR`.

Intentionally thin: flags, config, dispatch to `gwsss_jax.pipeline.run`.
"""

import os

from absl import app
from absl import flags
from ml_collections import config_flags

from gwsss_jax import config as config_lib
from gwsss_jax.common import cli
from gwsss_jax.common import xla_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, CAMs, labels and metrics.')
flags.DEFINE_bool('jax_distributed', False,
                  'Call jax.distributed.initialize() (multi-host TPU/GPU jobs).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  config_lib.validate(FLAGS.config)  # before JAX is imported: a bad value fails at once
  xla_flags.configure_cpu()  # before JAX starts: convolutions off YNNPACK (docs/benchmarks.md)
  from gwsss_jax import pipeline  # pylint: disable=g-import-not-at-top
  pipeline.run(FLAGS.config, FLAGS.workdir, distributed=FLAGS.jax_distributed)


def _config_path(argv):
  """The --config argument as given (possibly `path:args`), or None."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg[len('--config='):]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _unknown_override(argv, error):
  """The --config.a.b argument that names a key missing from the config, or None."""
  while error is not None and not isinstance(error, KeyError):
    error = error.args[0] if error.args and isinstance(error.args[0], Exception) else (
        error.__cause__ or error.__context__)
  if error is None or not error.args:
    return None
  key = str(error.args[0]).strip('"\'')
  for arg in argv:
    name = arg.split('=', 1)[0]
    if name.startswith('--config.') and key in name[len('--config.'):].split('.'):
      return name
  return None


def _parse_flags(argv):
  """absl's parser, with a missing config file, an unknown --config.* key or a mistyped value
  as one line and exit status 2, not a traceback."""
  path = _config_path(argv)
  if path is not None and not os.path.isfile(path.split(':', 1)[0]):
    cli.fail(f'--config={path}: config file not found')
  try:
    return FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    flag = _unknown_override(argv, e)
    if flag is not None:
      cli.fail(f'{flag}: unknown config key')
    cli.fail('bad flag: ' + ' '.join(str(e).split()))


if __name__ == '__main__':
  cli.run(main, flags_parser=_parse_flags)
