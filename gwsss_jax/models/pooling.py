"""Max-pooling whose gradient is cheap on XLA:CPU.

JAX differentiates `lax.reduce_window(max)` into `select_and_scatter_add`, which XLA:CPU
expands into four int32 iotas the size of the input, a variadic reduce-window that tracks the
argmax and a scatter, a noticeable part of a VGG16 training step on CPU
(`benchmarks/pool_ops.py` measures it).

`max_pool` keeps `reduce_window` for the value and gives it a custom VJP: the forward pass of
training also records, per output, which of the window's taps holds the maximum (int8, the
first one in row-major order on ties, as torch's `MaxPool2d` and XLA's select-and-scatter
choose), and the backward pass routes each output gradient to that tap. With stride 1 the taps
are accumulated into the padded input in place (`dynamic_update_slice`); with stride s > 1
each tap's gradients are spread out by a strided `lax.pad`. Both are elementwise loops that
XLA fuses, so they are much cheaper than the scatter; the value is identical and the gradient
equal (bitwise where windows do not overlap, to float rounding of the sums where they do).
"""

import functools

import jax
from jax import lax
import jax.numpy as jnp


def _out_size(size: int, window: int, stride: int, pad: tuple) -> int:
  return (size + pad[0] + pad[1] - window) // stride + 1


def _padded(x, padding):
  (top, bottom), (left, right) = padding
  if not (top or bottom or left or right):
    return x
  return jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)),
                 constant_values=jnp.array(-jnp.inf, x.dtype))


def _reduce_window(x, window: int, stride: int, padding):
  return lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), lax.max, (1, window, window, 1),
                           (1, stride, stride, 1), ((0, 0),) + tuple(padding) + ((0, 0),))


def _taps(x, window: int, stride: int, padding):
  """Yields (tap index k, the strided view of the padded input at offset divmod(k, window))."""
  xp = _padded(x, padding)
  n, _, _, c = xp.shape
  ho = _out_size(x.shape[1], window, stride, padding[0])
  wo = _out_size(x.shape[2], window, stride, padding[1])
  for k in range(window * window):
    di, dj = divmod(k, window)
    yield k, lax.slice(xp, (0, di, dj, 0),
                       (n, di + stride * (ho - 1) + 1, dj + stride * (wo - 1) + 1, c),
                       (1, stride, stride, 1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, stride, padding):
  return _reduce_window(x, window, stride, padding)


def _max_pool_fwd(x, window, stride, padding):
  value = index = None
  for k, tap in _taps(x, window, stride, padding):
    if value is None:
      value, index = tap, jnp.zeros(tap.shape, jnp.int8 if window * window < 128 else jnp.int32)
    else:
      index = jnp.where(tap > value, jnp.array(k, index.dtype), index)  # strict: first wins
      value = jnp.maximum(value, tap)
  return value, (index, x.shape)


def _max_pool_bwd(window, stride, padding, residuals, g):
  index, shape = residuals
  (top, bottom), (left, right) = padding
  n, h, w, c = shape
  hp, wp = h + top + bottom, w + left + right
  ho, wo = g.shape[1:3]
  zero = jnp.zeros((), g.dtype)
  dx = jnp.zeros((n, hp, wp, c), g.dtype) if stride == 1 else None
  for k in range(window * window):
    di, dj = divmod(k, window)
    gk = jnp.where(index == k, g, zero)
    if stride == 1:  # accumulate in place: one fused loop per tap over the output's size
      dx = lax.dynamic_update_slice(dx, lax.dynamic_slice(dx, (0, di, dj, 0), gk.shape) + gk,
                                    (0, di, dj, 0))
    else:  # spread the tap's gradients to rows di, di + s, ... of the padded input
      gk = lax.pad(gk, zero, ((0, 0, 0), (di, hp - di - stride * (ho - 1) - 1, stride - 1),
                              (dj, wp - dj - stride * (wo - 1) - 1, stride - 1), (0, 0, 0)))
      dx = gk if dx is None else dx + gk
  return (dx[:, top:top + h, left:left + w],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x, window: int, stride: int, padding=((0, 0), (0, 0))):
  """Max-pool of NHWC `x` with a square window, padded with -inf by `padding`.

  `padding` is ((top, bottom), (left, right)). Same value as `flax.linen.max_pool`; the
  gradient goes to the first maximum of each window (torch's and XLA's rule), computed
  without XLA:CPU's select-and-scatter (see the module docstring).
  """
  padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  return _max_pool(x, int(window), int(stride), padding)
