"""`models.pooling.max_pool` against torch's max_pool2d (value and autograd) and JAX's own
gradient of `reduce_window` (XLA's select-and-scatter)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from gwsss_jax.models import pooling
from gwsss_jax.models import resnet

# (window, stride, padding, H, W): VGG's 2x2/2 (odd size: floor), the release's pool4 3x3/1,
# DeepLab's 3x3/2, and an asymmetric pad as ResNet's ceil-mode stem pool makes.
CASES = ((2, 2, ((0, 0), (0, 0)), 9, 8), (3, 1, ((1, 1), (1, 1)), 7, 6),
         (3, 2, ((1, 1), (1, 1)), 9, 10), (3, 2, ((1, 2), (1, 1)), 8, 9))


def _tied_input(shape, seed):
  """Small integers: windows hold many ties, which exercises the first-maximum rule."""
  return np.random.default_rng(seed).integers(0, 3, size=shape).astype(np.float32)


def _torch_pool(x_nchw, window, stride, padding):
  (top, bottom), (left, right) = padding
  xt = torch.nn.functional.pad(x_nchw, (left, right, top, bottom), value=-float('inf'))
  return torch.nn.functional.max_pool2d(xt, window, stride)


@pytest.mark.parametrize('window,stride,padding,h,w', CASES)
def test_value_and_gradient_match_torch(window, stride, padding, h, w):
  x = _tied_input((2, 3, h, w), seed=h * w)
  xt = torch.from_numpy(x).requires_grad_(True)
  yt = _torch_pool(xt, window, stride, padding)
  g = np.random.default_rng(1).integers(-4, 5, size=yt.shape).astype(np.float32)
  yt.backward(torch.from_numpy(g))

  xj = jnp.asarray(x.transpose(0, 2, 3, 1))
  y, vjp = jax.vjp(lambda v: pooling.max_pool(v, window, stride, padding), xj)
  (dx,) = vjp(jnp.asarray(g.transpose(0, 2, 3, 1)))
  np.testing.assert_array_equal(np.asarray(y), yt.detach().numpy().transpose(0, 2, 3, 1))
  # Integer gradients: the sums over overlapping windows are exact, so equality is bitwise.
  np.testing.assert_array_equal(np.asarray(dx), xt.grad.numpy().transpose(0, 2, 3, 1))


@pytest.mark.parametrize('window,stride,padding,h,w', CASES)
def test_matches_jax_select_and_scatter_under_jit(window, stride, padding, h, w):
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.normal(size=(2, h, w, 5)).astype(np.float32))
  loss = lambda f: jax.jit(jax.grad(lambda v: jnp.sum(jnp.sin(f(v)))))
  ours = loss(lambda v: pooling.max_pool(v, window, stride, padding))(x)
  ref = loss(lambda v: nn.max_pool(v, (window, window), (stride, stride), padding))(x)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-6, atol=1e-6)


def test_bfloat16_and_resnet_stem():
  x = jnp.asarray(np.random.default_rng(3).normal(size=(1, 17, 16, 4)), jnp.bfloat16)
  dx = jax.grad(lambda v: jnp.sum(resnet._max_pool_3x3_s2(v, True).astype(jnp.float32)))(x)
  ref = jax.grad(lambda v: jnp.sum(nn.max_pool(v, (3, 3), (2, 2), ((1, 2), (1, 2)))
                                   .astype(jnp.float32)))(x)
  assert dx.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(dx, np.float32), np.asarray(ref, np.float32))
