"""Fully connected CRF (Kraehenbuehl & Koltun 2011) in JAX: mean-field inference with a
Gaussian (position) and a bilateral (position and colour) Potts kernel, batched over images.

The model and the inference are those of the reference `DenseCRF2D` (pydensecrf2), with its
default symmetric kernel normalisation: per iteration, for each kernel k,
  message += w_k n_k * K_k(n_k * Q),   n_k = 1 / sqrt(K_k(1)),
  Q = softmax(-unary + message),
where K_k is the permutohedral-lattice Gaussian filter of `lattice.py` (self included, as in the
C++ code). A batch holds images padded to one size: pixels outside `hw` take no part (their
features copy pixel (0, 0), so they add no lattice points, and their mass is zero).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gwsss_jax.crf import lattice as lattice_lib


class Params(NamedTuple):
  """The CRF's parameters, named as DeepLab's `DenseCRF` layer names them."""
  iterations: int = 10
  pos_xy_std: float = 3.0   # Gaussian kernel: spatial standard deviation (pixels)
  pos_w: float = 3.0        # Gaussian kernel: Potts weight
  bi_xy_std: float = 50.0   # bilateral kernel: spatial standard deviation (pixels)
  bi_rgb_std: float = 5.0   # bilateral kernel: colour standard deviation (0..255)
  bi_w: float = 10.0        # bilateral kernel: Potts weight


def params_from_config(c) -> Params:
  """Params from a config dict with the keys of `Params`."""
  return Params(**{k: c[k] for k in Params._fields})


def _features(rgb, hw, params: Params):
  """Gaussian [N, 2] and bilateral [N, 5] features of one padded image rgb uint8 [H, W, 3]."""
  h, w = rgb.shape[:2]
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing='ij')
  inside = (ys < hw[0]) & (xs < hw[1])
  xs = jnp.where(inside, xs, 0.0).reshape(-1)
  ys = jnp.where(inside, ys, 0.0).reshape(-1)
  colour = jnp.where(inside[..., None], rgb.astype(jnp.float32), rgb[0, 0].astype(jnp.float32))
  colour = colour.reshape(-1, 3)
  pos = jnp.stack([xs / params.pos_xy_std, ys / params.pos_xy_std], 1)
  bi = jnp.concatenate([jnp.stack([xs / params.bi_xy_std, ys / params.bi_xy_std], 1),
                        colour / params.bi_rgb_std], 1)
  return pos, bi, inside.reshape(-1)


def mean_field_one(unary, rgb, hw, params: Params, capacities=(None, None)):
  """One image: unary float32 [H, W, L] (energies, -log p), rgb uint8 [H, W, 3], hw int32 [2]
  (the valid region). Returns Q float32 [H, W, L]."""
  h, w, num_labels = unary.shape
  pos_f, bi_f, inside = _features(rgb, hw, params)
  mask = inside.astype(jnp.float32)[:, None]
  kernels = []
  for feats, weight, cap in ((pos_f, params.pos_w, capacities[0]),
                             (bi_f, params.bi_w, capacities[1])):
    if weight == 0:
      continue
    lat = lattice_lib.build(feats, cap)
    norm = jax.lax.rsqrt(lattice_lib.filter_values(lat, mask)[:, 0] + 1e-20)[:, None]
    kernels.append((lat, norm, np.float32(weight)))
  u = unary.reshape(-1, num_labels).astype(jnp.float32)
  q = jax.nn.softmax(-u, axis=-1)

  def step(q, _):
    energy = -u
    for lat, norm, weight in kernels:
      energy = energy + weight * norm * lattice_lib.filter_values(lat, norm * q * mask)
    return jax.nn.softmax(energy, axis=-1), None

  q, _ = jax.lax.scan(step, q, None, length=params.iterations)
  return q.reshape(h, w, num_labels)


def mean_field(unary, rgb, hw, params: Params, capacities=(None, None)):
  """A batch: unary [B, H, W, L], rgb uint8 [B, H, W, 3], hw int32 [B, 2] -> Q [B, H, W, L]."""
  fn = functools.partial(mean_field_one, params=params, capacities=capacities)
  return jax.vmap(fn)(unary, rgb, hw)


@functools.partial(jax.jit, static_argnames=('params', 'capacities'))
def mean_field_jit(unary, rgb, hw, params: Params, capacities=(None, None)):
  return mean_field(unary, rgb, hw, params, capacities)


def unary_from_probs(probs, eps: float = 1e-8):
  """-log(clip(p)) (pydensecrf's `unary_from_softmax`, which clips at 1e-8... via `clip`)."""
  return -jnp.log(jnp.clip(probs, eps, None))


def unary_from_labels(labels, num_labels: int, gt_prob: float):
  """pydensecrf's `unary_from_labels(labels, n, gt_prob, zero_unsure=False)`: energy
  -log(gt_prob) for the given label, -log((1 - gt_prob) / (n - 1)) for the others.
  labels int [..., H, W] in 0..n-1 -> float32 [..., H, W, n]."""
  on = -np.log(gt_prob).astype(np.float32)
  off = -np.log((1.0 - gt_prob) / (num_labels - 1)).astype(np.float32)
  return jnp.where(jax.nn.one_hot(labels, num_labels, dtype=bool), on, off).astype(jnp.float32)
