"""What every command-line entry point shares: errors as one line and exit status 2, and the
parsing of `--config=FILE --config.<section>.<key>=VALUE` flags."""

import difflib
import importlib.util
import os
import sys

from absl import app
from absl import flags
import ml_collections

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
  from gwsss_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  file, _, args = (path or '').partition(':')
  try:
    spec = importlib.util.spec_from_file_location('_gwsss_config', file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(args) if args else module.get_config()
  except Exception:  # pylint: disable=broad-except
    return config_lib.base_config()


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
  from gwsss_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  *sections, name = key.split('.')
  section = _section(config, sections)
  if section is not None:
    close = difflib.get_close_matches(name, list(section.keys()), n=1, cutoff=0.7)
    return ['.'.join(sections + close)] if close else []
  keys = list(config_lib.leaf_keys(config))
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
  """The first --config.a.b argument that names no key of the config, as one line: the new name
  of a renamed key (`config.RENAMED`), else the closest existing keys ("did you mean ..."); None
  when every such key exists."""
  from gwsss_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  config = _load_config(_config_path(argv))
  for arg in argv:
    name = arg.split('=', 1)[0]
    if not name.startswith('--config.'):
      continue
    key = name[len('--config.'):]
    renamed = config_lib.renamed_message(key, flag=True)
    if renamed is not None:
      return renamed
    *sections, last = key.split('.')
    section = _section(config, sections)
    if section is not None and last in section:
      continue
    hint = _suggest(config, key)
    did_you_mean = f' (did you mean {" or ".join("--config." + k for k in hint)}?)' if hint else ''
    return f'{name}: unknown config key{did_you_mean}'
  return None


def parse_config_flags(argv):
  """absl's parser for a program with a `--config` file flag (`config_flags`), with a missing
  config file, an unknown or renamed --config.* key or a mistyped value as one line and exit
  status 2, not a traceback."""
  path = _config_path(argv)
  if path is not None and not os.path.isfile(path.split(':', 1)[0]):
    fail(f'--config={path}: config file not found')
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    unknown = _unknown_override(argv)
    if unknown is not None:
      fail(unknown)
    fail('bad flag: ' + ' '.join(str(e).split()))
