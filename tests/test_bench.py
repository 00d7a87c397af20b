"""Smoke test of the benchmark command as the docs give it: `--quick` on tiny widths prints one
valid JSON line per figure with the expected names (no timing is checked: the figures depend on
the machine)."""

import json
import os
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Exactly as docs/benchmarks.md and docs/accelerators.md write it; `python` is this interpreter.
QUICK_COMMAND = 'python -m gwsss_jax.bench --config=configs/demo.py --quick'

EXPECTED = {
    'train_cls.images_per_s', 'train_cls.step_time', 'train_cls.compile_time',
    'train_cls.flops_per_step', 'train_cls.achieved_flops_per_s', 'train_cls.mfu',
    'graph_share', 'input_pipeline.groups_per_s', 'cam_export.images_per_s',
    'cam_export.compile_time', 'cam_export.mfu', 'train_seg.images_per_s', 'train_seg.step_time',
    'train_seg.compile_time', 'train_seg.mfu', 'host_memory_peak', 'device_memory_peak',
    'device.matmul_flops_per_s',
}


@pytest.mark.slow
def test_documented_quick_bench_prints_json_lines(tmp_path):
  for doc in ('benchmarks.md', 'accelerators.md'):
    with open(os.path.join(ROOT, 'docs', doc)) as f:
      assert QUICK_COMMAND in f.read(), doc
  argv = shlex.split(QUICK_COMMAND)
  assert argv[0] == 'python'
  # --quick itself compiles without XLA's backend optimisations on a CPU (nothing added here).
  proc = subprocess.run([sys.executable] + argv[1:], cwd=ROOT, capture_output=True, text=True,
                        timeout=900, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [l for l in proc.stdout.splitlines() if l.strip()]
  records = [json.loads(l) for l in lines]  # every stdout line is one JSON object
  names = {r['name'] for r in records}
  assert EXPECTED <= names, sorted(EXPECTED - names)
  for r in records:
    assert {'name', 'value', 'unit', 'device'} <= set(r), r
  by_name = {}
  for r in records:
    by_name.setdefault(r['name'], []).append(r)
  cls = by_name['train_cls.images_per_s']
  # The default backbones and Ks, each at the quick size.
  assert {(r['backbone'], r['K'], r['image_size']) for r in cls} == {
      (b, k, 32) for b in ('vgg16', 'resnet101') for k in (3, 4)}
  assert all(r['value'] > 0 for r in cls)
  assert all(r['all_steps_s'] and len(r['all_steps_s']) == 1
             for r in by_name['train_cls.step_time'])  # --quick: one timed step
  assert {r['K'] for r in by_name['graph_share']} == {2, 3}  # --quick's graph_ks (the bug)
  assert all(0.0 <= r['value'] <= 1.0 for r in by_name['graph_share'])
  assert by_name['input_pipeline.groups_per_s'][0]['value'] > 0
  for r in by_name['train_cls.mfu']:
    assert r['value'] is None or 0 < r['value'] < 1
  for r in by_name['device_memory_peak']:  # XLA:CPU reports none
    assert (r['value'] is None) == ('note' in r)
  assert '--xla_backend_optimization_level=0' in cls[0]['xla_flags']


def test_quick_cpu_flags_rules():
  from gwsss_jax.common import xla_flags
  env = {'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  assert xla_flags.configure_quick_cpu(env)
  assert env['XLA_FLAGS'].split() == ['--xla_force_host_platform_device_count=4',
                                      *xla_flags.QUICK_CPU_FLAGS]
  assert xla_flags.configure_quick_cpu(env) and env['XLA_FLAGS'].count('optimization_level') == 1
  gpu = {'JAX_PLATFORMS': 'cuda'}
  assert not xla_flags.configure_quick_cpu(gpu) and 'XLA_FLAGS' not in gpu


def test_accelerator_peaks():
  """MFU's denominators: bf16 and, for float32 on GPUs with TF32 units, the TF32 peak."""
  from gwsss_jax import bench

  class Device:
    def __init__(self, platform, kind):
      self.platform, self.device_kind = platform, kind

  assert bench.device_peak_flops(Device('gpu', 'NVIDIA H100 80GB HBM3'), 'bfloat16')[0] == 989.4e12
  peak, source = bench.device_peak_flops(Device('gpu', 'NVIDIA H100 80GB HBM3'), 'float32')
  assert peak == 494.7e12 and 'TF32' in source
  assert bench.device_peak_flops(Device('gpu', 'NVIDIA H100 PCIe'), 'bfloat16')[0] == 756e12
  assert bench.device_peak_flops(Device('gpu', 'Tesla V100-SXM2-16GB'), 'float32')[0] == 15.7e12
  assert bench.device_peak_flops(Device('tpu', 'TPU v4'), 'float32')[0] is None
  assert bench.device_peak_flops(Device('gpu', 'Mystery'), 'bfloat16')[0] is None


def test_configure_cpu_flag_rules():
  from gwsss_jax.common import xla_flags
  verified = xla_flags._jaxlib_version() in xla_flags._VERIFIED
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  assert xla_flags.configure_cpu(env) == verified
  assert (xla_flags.YNN_CONV_OFF in env['XLA_FLAGS']) == verified
  assert env['XLA_FLAGS'].startswith('--xla_force_host_platform_device_count=4')
  user = {'XLA_FLAGS': '--xla_cpu_experimental_ynn_fusion_type=+LIBRARY_FUSION_TYPE_DOT'}
  assert not xla_flags.configure_cpu(user)  # the user's choice is kept
  assert user['XLA_FLAGS'] == '--xla_cpu_experimental_ynn_fusion_type=+LIBRARY_FUSION_TYPE_DOT'
  opt_out = {'GWSSS_YNN_CONV': '1'}
  assert not xla_flags.configure_cpu(opt_out) and 'XLA_FLAGS' not in opt_out


_GRAD_SCRIPT = r'''
import json, sys
import numpy as np
from gwsss_jax.common import xla_flags
xla_flags.configure_cpu()
import jax, jax.numpy as jnp
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 20, 20, 3)).astype(np.float32)
w1 = (rng.standard_normal((3, 3, 3, 8)) * 0.3).astype(np.float32)
w2 = (rng.standard_normal((3, 3, 8, 5)) * 0.3).astype(np.float32)
def loss(x, w1, w2):
  dn = ('NHWC', 'HWIO', 'NHWC')
  h = jax.nn.relu(jax.lax.conv_general_dilated(x, w1, (1, 1), ((1, 1), (1, 1)),
                                               dimension_numbers=dn))
  y = jax.lax.conv_general_dilated(h, w2, (1, 1), ((2, 2), (2, 2)), rhs_dilation=(2, 2),
                                   dimension_numbers=dn)
  return jnp.sum(jnp.sin(y))
g = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, w1, w2)
json.dump({'x': x.tolist(), 'w1': w1.tolist(), 'w2': w2.tolist(),
           'grads': [np.asarray(a).tolist() for a in g]}, sys.stdout)
'''


@pytest.mark.slow
def test_eigen_convolution_gradients_match_torch():
  """The flag of `xla_flags.configure_cpu` changes which library runs the convolutions, not
  their math: input and weight gradients (plain and dilated) against torch autograd."""
  import numpy as np
  import torch
  proc = subprocess.run([sys.executable, '-c', _GRAD_SCRIPT], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout)
  x = torch.tensor(np.asarray(out['x']).transpose(0, 3, 1, 2), requires_grad=True)
  w1 = torch.tensor(np.asarray(out['w1']).transpose(3, 2, 0, 1), requires_grad=True)
  w2 = torch.tensor(np.asarray(out['w2']).transpose(3, 2, 0, 1), requires_grad=True)
  h = torch.relu(torch.nn.functional.conv2d(x, w1, padding=1))
  torch.sin(torch.nn.functional.conv2d(h, w2, padding=2, dilation=2)).sum().backward()
  gx, gw1, gw2 = (np.asarray(g) for g in out['grads'])
  np.testing.assert_allclose(gx, x.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(gw1, w1.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(gw2, w2.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-4, atol=1e-4)


def test_cost_flops_counts_the_lowered_convolutions():
  """MFU's numerator: the lowered step's FLOPs, which on GPUs still hold the convolutions that
  the compiled module hands to cuDNN. Checked against the textbook count of a VALID
  convolution and of its two gradients (2 multiply-adds per weight and output position)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gwsss_jax import bench  # pylint: disable=g-import-not-at-top
  n, h, w, cin, cout, k = 2, 12, 10, 8, 16, 3
  conv = lambda x, kern: jax.lax.conv_general_dilated(
      x, kern, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  x, kern = jnp.ones((n, h, w, cin)), jnp.ones((k, k, cin, cout))
  one = 2 * n * (h - k + 1) * (w - k + 1) * cin * cout * k * k
  assert bench.cost_flops(jax.jit(conv).lower(x, kern)) == one
  # Forward, input gradient and weight gradient: three convolutions of the same size (the
  # sum's and the cotangent's few FLOPs aside).
  grads = jax.jit(jax.value_and_grad(lambda a, b: conv(a, b).sum(), argnums=(0, 1)))
  assert bench.cost_flops(grads.lower(x, kern)) == pytest.approx(3 * one, rel=0.01)
