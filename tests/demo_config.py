"""configs/demo.py with dotted-key overrides, as the command line's --config.<key>=value would
give it (for tests that run a stage in-process and in a subprocess with the same settings)."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def demo_config(overrides: dict, data_root: str, name: str = 'demo'):
  """configs/<name>.py (the demo by default) with the overrides and `data.root`."""
  module = {}
  with open(os.path.join(ROOT, 'configs', f'{name}.py')) as f:
    exec(compile(f.read(), f'configs/{name}.py', 'exec'), module)  # pylint: disable=exec-used
  config = module['get_config']()
  for key, value in overrides.items():
    *sections, name = key.split('.')
    target = config
    for part in sections:
      target = target[part]
    target[name] = value
  config.data.root = data_root
  return config
