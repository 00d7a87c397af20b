"""Test session set-up: 4 simulated CPU devices (multi-device tests use them; the rest run on
device 0), and TensorFlow kept off any accelerator."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
