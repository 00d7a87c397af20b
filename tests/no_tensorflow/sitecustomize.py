"""Makes TensorFlow, tfds, clu and pycocotools unimportable, as on the GPU machine.

A process started with this folder first on PYTHONPATH loads it at start-up (Python imports
`sitecustomize` from sys.path): any import of the blocked packages then fails with
ModuleNotFoundError, even where they are installed. tests/test_no_tensorflow.py and the device
check's smoke test run under it; child processes inherit PYTHONPATH and so the block.
"""

import sys

BLOCKED = ('tensorflow', 'tensorflow_datasets', 'clu', 'pycocotools')


class _Blocker:
  """A meta-path finder that refuses the blocked top-level packages and their submodules."""

  def find_spec(self, fullname, path=None, target=None):  # pylint: disable=unused-argument
    if fullname.split('.')[0] in BLOCKED:
      raise ModuleNotFoundError(f'No module named {fullname!r} (blocked by '
                                f'{__file__} to mimic a machine without TensorFlow)',
                                name=fullname)
    return None


sys.meta_path.insert(0, _Blocker())
