"""Smoke test of the benchmark command: `--quick` on tiny widths prints one valid JSON line per
figure with the expected names (no timing is checked: the figures depend on the machine)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXPECTED = {
    'train_cls.images_per_s', 'train_cls.step_time', 'train_cls.compile_time',
    'train_cls.flops_per_step', 'train_cls.achieved_flops_per_s', 'graph_share',
    'input_pipeline.groups_per_s', 'cam_export.images_per_s', 'cam_export.compile_time',
    'train_seg.images_per_s', 'train_seg.step_time', 'train_seg.compile_time',
    'host_memory_peak', 'device.matmul_flops_per_s',
}


@pytest.mark.slow
def test_quick_bench_prints_json_lines(tmp_path):
  cmd = [sys.executable, '-m', 'gwsss_jax.bench', '--config=configs/demo.py', '--quick',
         '--backbones=vgg16', '--ks=3', '--graph_ks=2', '--steps=1', '--warmup=0',
         f'--workdir={tmp_path}']
  # Compilation dominates at these sizes: skip XLA's backend optimisations (speed is not tested).
  xla_flags = (os.environ.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0'
               ' --xla_llvm_disable_expensive_passes=true')
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', XLA_FLAGS=xla_flags))
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [l for l in proc.stdout.splitlines() if l.strip()]
  records = [json.loads(l) for l in lines]  # every stdout line is one JSON object
  names = {r['name'] for r in records}
  assert EXPECTED <= names, sorted(EXPECTED - names)
  for r in records:
    assert {'name', 'value', 'unit', 'device'} <= set(r), r
  by_name = {r['name']: r for r in records}
  cls = by_name['train_cls.images_per_s']
  assert (cls['backbone'], cls['K'], cls['image_size']) == ('vgg16', 3, 32)
  assert cls['value'] > 0
  assert by_name['train_cls.flops_per_step']['value'] > 0
  assert 0.0 <= by_name['graph_share']['value'] <= 1.0
  assert by_name['input_pipeline.groups_per_s']['value'] > 0
  flops = by_name['train_cls.achieved_flops_per_s']
  assert flops['peak_flops_per_s'] is None or flops['fraction_of_peak'] > 0


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
