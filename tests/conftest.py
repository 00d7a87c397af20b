"""Test session set-up: 4 simulated CPU devices (multi-device tests use them; the rest run on
device 0), TensorFlow kept off any accelerator, and the driver's XLA:CPU settings."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from gwsss_jax.common import xla_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

xla_flags.configure_cpu()  # the same XLA:CPU convolution path as the driver uses
