"""One BLAS thread per process, set before NumPy loads: the entry points call `limit_threads`.

The NumPy loader (`data/np_loader.py`) decodes and resizes images in its own pool of threads,
and its resize is a matrix product, which NumPy's OpenBLAS (or MKL) spreads over every core
from each of those threads. The threads then fight for the cores: even a single process
loads images markedly slower than with one BLAS thread (docs/data.md), and runs that share a
machine (a sweep's processes, `benchmarks/msrc_device.sh`'s nine runs on one GPU box) multiply
the excess, while the accelerator waits for its batches. Nothing else this package does on the
host multiplies matrices large enough to gain from BLAS threads (JAX's CPU backend keeps its
own thread pool). OpenBLAS and MKL read these variables once, when NumPy is first imported, so
the call must come before that; a value the user has set is kept.
"""

import os
import sys

VARIABLES = ('OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS')


def limit_threads() -> bool:
  """Sets each of VARIABLES to 1 where unset; returns False if NumPy was already loaded (then
  this process's BLAS keeps the thread count it started with)."""
  for name in VARIABLES:
    os.environ.setdefault(name, '1')
  return 'numpy' not in sys.modules
