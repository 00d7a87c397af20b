"""XLA:CPU settings that make training on a CPU several times faster.

jaxlib 0.10 runs every convolution on the CPU through YNNPACK ("ynn fusions"). Its forward and
input-gradient convolutions are fine, but the weight gradient, which XLA canonicalises into a
convolution whose window is the whole feature map (H x W) and whose contraction is the batch,
runs at a small fraction of the CPU's peak on YNNPACK, and the early high-resolution layers
then dominate a training step. Taking convolutions out of YNNPACK (they then run on XLA's Eigen
convolution, whose weight gradient costs about as much as the forward) keeps the same float32
math (tests/test_bench.py compares the gradients with PyTorch's) and makes training several
times faster. docs/benchmarks.md says how to measure it (`benchmarks/conv_ops.py` times each
convolution).

XLA parses XLA_FLAGS once, when the first backend starts, and aborts on flags it does not know,
so `configure_cpu()` must run before the first computation and only adds the flag to jaxlib
versions known to have it.
"""

import os

YNN_CONV_OFF = '--xla_cpu_experimental_ynn_fusion_type=-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION'
# jaxlib releases on which the flag was verified to exist and to help (major, minor).
_VERIFIED = ((0, 10),)


def _jaxlib_version() -> tuple:
  try:
    import jaxlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    return ()
  return tuple(int(p) for p in jaxlib.__version__.split('.')[:2] if p.isdigit())


def _backends_started() -> bool:
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):  # a JAX without this private helper: assume not yet
    return False


def configure_cpu(environ=None) -> bool:
  """Adds `YNN_CONV_OFF` to XLA_FLAGS; returns whether XLA_FLAGS now holds it.

  Leaves XLA_FLAGS alone when the user already chose a `ynn_fusion_type`, when the installed
  jaxlib is not one of `_VERIFIED`, when GWSSS_YNN_CONV=1 asks for XLA's default, or when a
  JAX backend has already started (too late: the flags are parsed). Harmless on GPU/TPU:
  the flag only concerns XLA:CPU.
  """
  env = os.environ if environ is None else environ
  flags = env.get('XLA_FLAGS', '')
  if 'ynn_fusion_type' in flags:
    return YNN_CONV_OFF in flags.split()
  if env.get('GWSSS_YNN_CONV') == '1' or _jaxlib_version() not in _VERIFIED:
    return False
  if environ is None and _backends_started():
    return False
  env['XLA_FLAGS'] = (flags + ' ' + YNN_CONV_OFF).strip()
  return True


# Smoke tests (`--quick`) compile tiny networks once: XLA:CPU's backend optimisations then cost
# far more than they save.
QUICK_CPU_FLAGS = ('--xla_backend_optimization_level=0', '--xla_llvm_disable_expensive_passes=true')


def _accelerator_plugin() -> bool:
  import importlib.util  # pylint: disable=g-import-not-at-top
  return any(importlib.util.find_spec(name) is not None for name in ('jax_plugins', 'libtpu'))


def configure_quick_cpu(environ=None) -> bool:
  """Adds `QUICK_CPU_FLAGS` to XLA_FLAGS when JAX will run on the CPU; returns whether it did.

  Only before the first backend starts, and only where JAX_PLATFORMS names the CPU first or,
  unset, no accelerator plugin is installed (on a GPU machine the flags would slow the device's
  compiled code, and `--quick` there still runs on the GPU).
  """
  env = os.environ if environ is None else environ
  platforms = env.get('JAX_PLATFORMS', '')
  if platforms.split(',')[0] not in ('', 'cpu') or (not platforms and _accelerator_plugin()):
    return False
  if environ is None and _backends_started():
    return False
  flags = env.get('XLA_FLAGS', '')
  missing = [f for f in QUICK_CPU_FLAGS if f.split('=')[0] not in flags]
  env['XLA_FLAGS'] = ' '.join([flags] + missing).strip()
  return True
