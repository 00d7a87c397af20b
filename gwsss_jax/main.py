"""Runs the pipeline: `python -m gwsss_jax.main --config=configs/voc.py --workdir=DIR`.

Intentionally thin: flags, config, dispatch to `gwsss_jax.pipeline.run`.
"""

import difflib
import importlib.util
import os

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags

from gwsss_jax import config as config_lib
from gwsss_jax.common import cli
from gwsss_jax.common import console
from gwsss_jax.common import xla_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, CAMs, labels and metrics.')
flags.DEFINE_bool('jax_distributed', False,
                  'Call jax.distributed.initialize() (multi-host TPU/GPU jobs).')
flags.DEFINE_enum('discard_from', None, list(config_lib.STAGES),
                  'Delete the outputs of this stage and of the stages that read them before the '
                  'run (to make them again after a change of the config keys they depend on).')
flags.DEFINE_bool('verbose', False,
                  "Show the INFO logs of JAX, orbax, clu and TensorFlow (otherwise only gwsss_jax's "
                  'own lines and warnings reach the console; TensorBoard receives every metric).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  console.configure(FLAGS.verbose)
  config_lib.validate(FLAGS.config)  # before JAX is imported: a bad value fails at once
  xla_flags.configure_cpu()  # before JAX starts: convolutions off YNNPACK (docs/benchmarks.md)
  from gwsss_jax import pipeline  # pylint: disable=g-import-not-at-top
  pipeline.run(FLAGS.config, FLAGS.workdir, distributed=FLAGS.jax_distributed,
               discard_from=FLAGS.discard_from or '')


def _config_path(argv):
  """The --config argument as given (possibly `path:args`), or None."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg[len('--config='):]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _load_config(path):
  """The config that `--config=path[:args]` names (base_config() if it does not load): the
  reference for which --config.* keys exist."""
  file, _, args = (path or '').partition(':')
  try:
    spec = importlib.util.spec_from_file_location('_gwsss_config', file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(args) if args else module.get_config()
  except Exception:  # pylint: disable=broad-except
    return config_lib.base_config()


def _leaf_keys(config, prefix=''):
  for name, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaf_keys(value, f'{prefix}{name}.')
    else:
      yield prefix + name


def _section(config, parts):
  """The sub-config at `parts`, or None where a part is missing or not a section."""
  for part in parts:
    if not isinstance(config, ml_collections.ConfigDict) or part not in config:
      return None
    config = config[part]
  return config if isinstance(config, ml_collections.ConfigDict) else None


def _suggest(config, key: str) -> list:
  """Existing keys close to the unknown dotted `key`. In an existing section: a near spelling
  of its last part. Else keys with the missing section's name as a part (`crf.impl` ->
  `cams.crf`), a near spelling of the whole key, or the same name in another section."""
  *sections, name = key.split('.')
  section = _section(config, sections)
  if section is not None:
    close = difflib.get_close_matches(name, list(section.keys()), n=1, cutoff=0.7)
    return ['.'.join(sections + close)] if close else []
  keys = list(_leaf_keys(config))
  missing = next(part for i, part in enumerate(sections)
                 if _section(config, sections[:i + 1]) is None)
  named = [k for k in keys if missing in k.split('.')]
  if named:
    return named[:2]
  close = difflib.get_close_matches(key, keys, n=1, cutoff=0.8)
  if close:
    return close
  return [k for k in keys if k.rsplit('.', 1)[-1] == name][:2]


def _unknown_override(argv):
  """The first --config.a.b argument that names no key of the config, as one line with the
  closest existing keys ("did you mean ..."), or None when every such key exists."""
  config = _load_config(_config_path(argv))
  for arg in argv:
    name = arg.split('=', 1)[0]
    if not name.startswith('--config.'):
      continue
    key = name[len('--config.'):]
    *sections, last = key.split('.')
    section = _section(config, sections)
    if section is not None and last in section:
      continue
    hint = _suggest(config, key)
    did_you_mean = f' (did you mean {" or ".join("--config." + k for k in hint)}?)' if hint else ''
    return f'{name}: unknown config key{did_you_mean}'
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
    unknown = _unknown_override(argv)
    if unknown is not None:
      cli.fail(unknown)
    cli.fail('bad flag: ' + ' '.join(str(e).split()))


if __name__ == '__main__':
  cli.run(main, flags_parser=_parse_flags)
