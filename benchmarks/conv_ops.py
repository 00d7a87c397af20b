"""Per-op timing of VGG16's convolutions at 224x224 (batch 3): forward, backprop-input and
backprop-filter under XLA:CPU (NHWC/HWIO, as flax) against torch CPU (NCHW) doing the same op.

  .venv/bin/python -m benchmarks.conv_ops [--reps=5] [--layers=all|conv1_2,conv3_2,...]
  (from the repository root)

Prints one JSON line per (layer, op, framework) with the median time in ms and GFLOP/s, and the
totals over the 13 convolutions. `bwd_filter_taps` / `bwd_filter_im2col` compute the weight
gradient by hand (nine shifted matmuls / one patches matmul), the candidates of a custom VJP.
Run it under `XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION`
to time XLA's Eigen convolutions instead of YNNPACK (see gwsss_jax/common/xla_flags.py).
With GWSSS_BENCH_SMOKE=1 (benchmarks/smoke.py) every layer shrinks (1/8 of the side and of the
channels, batch 1) and each op runs once, without warm-up.
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks import smoke

# (name, H=W of the input, C_in, C_out, dilation) of the release's VGG16 (stride 8).
LAYERS = (('conv1_1', 224, 3, 64, 1), ('conv1_2', 224, 64, 64, 1),
          ('conv2_1', 112, 64, 128, 1), ('conv2_2', 112, 128, 128, 1),
          ('conv3_1', 56, 128, 256, 1), ('conv3_2', 56, 256, 256, 1),
          ('conv4_1', 28, 256, 512, 1), ('conv4_2', 28, 512, 512, 1),
          ('conv5_1', 28, 512, 512, 2))
COUNT = {'conv3_2': 2, 'conv4_2': 2, 'conv5_1': 3}  # identical layers in the network


def median_time(fn, reps, warmup=True):
  if warmup:
    fn()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def jax_ops(n, h, cin, cout, d):
  pad = ((d, d), (d, d))
  dn = ('NHWC', 'HWIO', 'NHWC')
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), pad, rhs_dilation=(d, d),
                                                   dimension_numbers=dn)
  fwd = jax.jit(conv)
  bwd_in = jax.jit(lambda x, w, g: jax.vjp(lambda x_: conv(x_, w), x)[1](g)[0])
  bwd_w = jax.jit(lambda x, w, g: jax.vjp(lambda w_: conv(x, w_), w)[1](g)[0])
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((n, h, h, cin), np.float32))
  w = jnp.asarray(rng.standard_normal((3, 3, cin, cout), np.float32) * 0.05)
  g = jnp.asarray(rng.standard_normal((n, h, h, cout), np.float32))
  taps = jax.jit(lambda x, g: tap_filter_grad(x, g, d))
  im2col = jax.jit(lambda x, g: im2col_filter_grad(x, g, d))
  return {'fwd': lambda: fwd(x, w).block_until_ready(),
          'bwd_input': lambda: bwd_in(x, w, g).block_until_ready(),
          'bwd_filter': lambda: bwd_w(x, w, g).block_until_ready(),
          'bwd_filter_taps': lambda: taps(x, g).block_until_ready(),
          'bwd_filter_im2col': lambda: im2col(x, g).block_until_ready()}


def _shifted(x, d):
  n, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (d, d), (d, d), (0, 0)))
  return [jax.lax.slice(xp, (0, i * d, j * d, 0), (n, i * d + h, j * d + w, c))
          for i in range(3) for j in range(3)]


def tap_filter_grad(x, g, d):
  """dW[i, j] = sum_nhw x_pad[n, h + i d, w + j d, :]^T g[n, h, w, :]: nine matmuls."""
  taps = [jnp.einsum('nhwc,nhwd->cd', xs, g) for xs in _shifted(x, d)]
  return jnp.stack(taps).reshape((3, 3) + taps[0].shape)


def im2col_filter_grad(x, g, d):
  patches = jnp.concatenate(_shifted(x, d), axis=-1)
  dw = jnp.einsum('nhwc,nhwd->cd', patches, g)
  return dw.reshape((3, 3, x.shape[-1], g.shape[-1]))


def torch_ops(n, h, cin, cout, d):
  rng = np.random.default_rng(0)
  x = torch.from_numpy(rng.standard_normal((n, cin, h, h), np.float32))
  w = torch.from_numpy(rng.standard_normal((cout, cin, 3, 3), np.float32) * 0.05)
  g = torch.from_numpy(rng.standard_normal((n, cout, h, h), np.float32))
  conv_bwd = torch.ops.aten.convolution_backward

  def bwd(mask):
    with torch.no_grad():
      conv_bwd(g, x, w, None, [1, 1], [d, d], [d, d], False, [0, 0], 1, mask)
  def fwd():
    with torch.no_grad():
      torch.nn.functional.conv2d(x, w, None, 1, d, d)
  return {'fwd': fwd, 'bwd_input': lambda: bwd([True, False, False]),
          'bwd_filter': lambda: bwd([False, True, False])}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--reps', type=int, default=5)
  parser.add_argument('--batch', type=int, default=3)
  parser.add_argument('--layers', default='all')
  args = parser.parse_args()
  smoke_mode = smoke.enabled()
  if smoke_mode:
    args.reps, args.batch = 1, 1
  torch.set_num_threads(2)
  total = {}
  for name, h, cin, cout, d in LAYERS:
    if args.layers != 'all' and name not in args.layers.split(','):
      continue
    if smoke_mode:  # the RGB input keeps its 3 channels
      h, cin, cout = max(h // 8, 4), (cin if cin == 3 else cin // 8), cout // 8
    flops = 2.0 * args.batch * h * h * cin * cout * 9
    for fw, make in (('jax', jax_ops), ('torch', torch_ops)):
      ops = make(args.batch, h, cin, cout, d)
      for op, fn in ops.items():
        t = median_time(fn, args.reps, warmup=not smoke_mode)
        total[(fw, op)] = total.get((fw, op), 0.0) + t * COUNT.get(name, 1)
        print(json.dumps({'layer': name, 'op': op, 'fw': fw, 'ms': round(t * 1e3, 2),
                          'gflops': round(flops / t / 1e9, 1)}), flush=True)
  for (fw, op), t in sorted(total.items()):
    print(json.dumps({'layer': 'ALL13', 'op': op, 'fw': fw, 'ms': round(t * 1e3, 1)}))


if __name__ == '__main__':
  main()
