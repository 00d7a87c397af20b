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

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gwsss_jax.crf import lattice as lattice_lib
from gwsss_jax.crf import Params


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


def mean_field_one(unary, rgb, hw, params: Params, capacities=(None, None),
                   with_overflow: bool = False):
  """One image: unary float32 [H, W, L] (energies, -log p), rgb uint8 [H, W, 3], hw int32 [2]
  (the valid region). Returns Q float32 [H, W, L] (and with `with_overflow`, the number of
  points of each lattice, Gaussian and bilateral, int32 [2]: more than its capacity makes Q
  wrong).

  `capacities` (Gaussian, bilateral): lattice table sizes; None is the safe bound N (d + 1).
  """
  h, w, num_labels = unary.shape
  pos_f, bi_f, inside = _features(rgb, hw, params)
  mask = inside.astype(jnp.float32)[:, None]
  kernels = []
  points = []
  for feats, weight, cap in ((pos_f, params.pos_w, capacities[0]),
                             (bi_f, params.bi_w, capacities[1])):
    if weight == 0:
      points.append(jnp.zeros((), jnp.int32))
      continue
    lat = lattice_lib.build(feats, cap)
    points.append(lat.num_points)
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
  q = q.reshape(h, w, num_labels)
  return (q, jnp.stack(points)) if with_overflow else q


def mean_field(unary, rgb, hw, params: Params, capacities=(None, None),
               with_overflow: bool = False):
  """A batch: unary [B, H, W, L], rgb uint8 [B, H, W, 3], hw int32 [B, 2] -> Q [B, H, W, L]
  (and lattice points [B, 2], see `mean_field_one`).

  The images go one after the other (`lax.map`): each is large enough to occupy the device, and
  vmap's batched scatters and gathers run several times slower on XLA:CPU."""
  fn = functools.partial(mean_field_one, params=params, capacities=capacities,
                         with_overflow=with_overflow)
  return jax.lax.map(lambda a: fn(*a), (unary, rgb, hw))


@functools.partial(jax.jit, static_argnames=('params', 'capacities'))
def mean_field_jit(unary, rgb, hw, params: Params, capacities=(None, None)):
  return mean_field(unary, rgb, hw, params, capacities)


def unary_from_probs(probs, clip: float = 1e-5):
  """-log(max(p, clip)) (pydensecrf's `unary_from_softmax`)."""
  return -jnp.log(jnp.clip(probs, clip, 1.0))


# Lattice table size, as a multiple of the pixel count, of a labeller's first call. Photographs
# fill far fewer lattice points than the bound N (d + 1) (about N for the bilateral kernels of
# IRNet and DeepLab on MSRC-v2), and the blur and neighbour search cost grows with the table.
CAPACITY_PER_PIXEL = 1.25
_CAPACITY_STEP = 4096


def grown_capacity(points: int, bound: int, current: int = 0) -> int:
  """The table size for a lattice of `points` points: 25% more, rounded up to a multiple of
  4096, not below `current` nor above `bound` (the safe N (d + 1))."""
  return min(bound, max(current, -(-int(1.25 * points) // _CAPACITY_STEP) * _CAPACITY_STEP))


def make_labeller(params: Params, devices=None):
  """(unary [B, H, W, L], rgb uint8 [B, H, W, 3], hw int32 [B, 2]) -> labels uint8 [B, H, W]
  (argmax of Q, a host array), jit-compiled, the batch split over `devices` (default: this
  host's) with shard_map when their number divides B, else run on the first.

  The lattice tables start at CAPACITY_PER_PIXEL x N points. A batch with an image that needs
  more is run again with tables grown to fit it (by 25%, in steps of 4096, at most the bound
  N (d + 1)), which later calls keep: one more compilation each time they grow."""
  devices = list(jax.local_devices() if devices is None else devices)
  mesh = Mesh(np.asarray(devices), ('data',))
  spec = P('data')
  compiled, capacities = {}, {}

  def get(caps, sharded: bool):
    if (caps, sharded) not in compiled:
      def label(unary, rgb, hw):
        q, points = mean_field(unary, rgb, hw, params, caps, with_overflow=True)
        return jnp.argmax(q, -1).astype(jnp.uint8), points
      if sharded:
        label = jax.shard_map(label, mesh=mesh, in_specs=(spec, spec, spec),
                              out_specs=(spec, spec), check_vma=False)
      compiled[caps, sharded] = jax.jit(label)
    return compiled[caps, sharded]

  def run(unary, rgb, hw):
    n = unary.shape[1] * unary.shape[2]
    bounds = (3 * n, 6 * n)
    caps = capacities.setdefault(
        unary.shape[1:3], tuple(min(b, int(CAPACITY_PER_PIXEL * n) + 1) for b in bounds))
    sharded = len(devices) > 1 and unary.shape[0] % len(devices) == 0
    target = NamedSharding(mesh, spec) if sharded else devices[0]
    args = tuple(jax.device_put(x, target) for x in (unary, rgb, hw))
    labels, points = get(caps, sharded)(*args)
    needed = np.asarray(points).max(0)
    if np.any(needed > np.asarray(caps)):
      caps = tuple(grown_capacity(m, b, c) for b, c, m in zip(bounds, caps, needed))
      capacities[unary.shape[1:3]] = caps
      labels, _ = get(caps, sharded)(*args)
    return np.asarray(labels)
  return run
