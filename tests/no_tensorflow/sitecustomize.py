"""Hides TensorFlow, tfds, clu and pycocotools, as on the GPU machine that has none of them.

A process started with this folder first on PYTHONPATH loads it at start-up (Python imports
`sitecustomize` from sys.path). The path finder then finds none of the hidden packages, so
`import tensorflow` raises ModuleNotFoundError and `importlib.util.find_spec('tensorflow')` is
None, exactly as where they are not installed (libraries such as torch probe with find_spec).
tests/test_no_tensorflow.py and the device check's smoke test run under it; child processes
inherit PYTHONPATH and so the same view. GWSSS_HIDE=a,b hides more packages (torch, for the
device check without PyTorch).
"""

import importlib.machinery
import os

HIDDEN = ('tensorflow', 'tensorflow_datasets', 'clu', 'pycocotools') + tuple(
    n for n in os.environ.get('GWSSS_HIDE', '').split(',') if n)

_find_spec = importlib.machinery.PathFinder.find_spec


def _hiding_find_spec(cls, fullname, path=None, target=None):  # pylint: disable=unused-argument
  if fullname.split('.')[0] in HIDDEN:
    return None
  return _find_spec(fullname, path, target)


importlib.machinery.PathFinder.find_spec = classmethod(_hiding_find_spec)
