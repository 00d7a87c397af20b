"""Test session set-up: 4 simulated CPU devices (multi-device tests use them; the rest run on
device 0), TensorFlow kept off any accelerator, and the driver's XLA:CPU settings."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from gwsss_jax.common import xla_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

xla_flags.configure_cpu()  # the same XLA:CPU convolution path as the driver uses


import subprocess  # pylint: disable=g-import-not-at-top,wrong-import-position,wrong-import-order

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position,wrong-import-order


@pytest.fixture
def small_disk(tmp_path):
  """A 3 MB tmpfs at `<tmp_path>/small` (a real full disk); skipped where it cannot be mounted
  (not root)."""
  path = tmp_path / 'small'
  path.mkdir()
  if os.geteuid() != 0 or subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=3m', 'tmpfs',
                                          str(path)], capture_output=True).returncode:
    pytest.skip('needs root to mount a small tmpfs')
  try:
    yield path
  finally:
    subprocess.run(['umount', '-l', str(path)], check=False)
