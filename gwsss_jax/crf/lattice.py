"""The permutohedral lattice (Adams, Baek & Davis 2010) in JAX: Gaussian filtering in d
dimensions in time linear in the number of points, expressed with sort, gather and scatter.

It follows the C++ lattice of Kraehenbuehl's dense CRF (densecrf/src/permutohedral.cpp, which
pydensecrf2 wraps) step for step: the same elevation, rounding, simplex ranking, barycentric
weights, [1/2, 1, 1/2] blur along the d + 1 lattice directions and the same final scale alpha,
so that the JAX CRF and the reference agree to float rounding. Where the C++ code keeps a hash
table of the occupied lattice points, this code sorts the vertices by hashes of their keys to
number the distinct points (falling back to the whole keys where distinct keys share the
hashes), and finds a point's blur neighbours by binary search on the sorted hashes, comparing
the full keys to rule out hash collisions.

Shapes are static: a point cloud of N points has at most N (d + 1) lattice points, and the
tables are sized for that bound (`capacity` can shrink them when the caller knows better).
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_HASH_MULT = np.int32(2531011)  # the C++ HashTable's multiplier
# Odd multipliers of two more hashes of the keys (`_sorted_vertices`): the top bits of the
# second fill the sort key, the third checks for keys that both share.
_HASH_MULT2 = np.int32(-1640531535)  # 0x9E3779B1
_HASH_MULT3 = np.int32(-2048144789)  # 0x85EBCA6B
# Hash collisions are resolved by looking at this many sorted entries from the first candidate.
_PROBE = 3


class Lattice(NamedTuple):
  """A lattice built over N points (all arrays of one image; `lax.map` `build` over a batch: under
  vmap the collision fallback's `lax.cond` becomes a select, which runs the slow exact sort for
  every image).

  offsets: int32 [N, d + 1] lattice point of each simplex vertex of each point.
  weights: float32 [N, d + 1] barycentric weights.
  neighbours: int32 [d + 1, 2, P] per direction, the two blur neighbours of each lattice point
    (P = the table size; `P` itself means 'absent' and reads as zero).
  num_points: int32 [] the number of distinct lattice points (the rest of the table is unused).
  """
  offsets: jax.Array
  weights: jax.Array
  neighbours: jax.Array
  num_points: jax.Array


def _hash(keys, mult=_HASH_MULT):
  """int32 hash of int32 keys [..., d] (wrapping arithmetic)."""
  h = jnp.zeros(keys.shape[:-1], jnp.int32)
  for i in range(keys.shape[-1]):
    h = (h + keys[..., i]) * mult
  return h


def _simplex(features):
  """Per point: the d + 1 vertex keys [N, d + 1, d] and barycentric weights [N, d + 1]."""
  n, d = features.shape
  inv_std_dev = float(np.float32(math.sqrt(2.0 / 3.0) * (d + 1)))  # a float in C++
  scale = np.array([1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std_dev for i in range(d)],
                   np.float32)
  cf = features.astype(jnp.float32) * scale  # [N, d]
  # elevated[j] = sum_{i >= j} cf[i] - j cf[j - 1] (j >= 1), elevated[0] = sum cf.
  suffix = jnp.flip(jnp.cumsum(jnp.flip(cf, 1), 1), 1)  # [N, d]: sum_{i >= j} cf[i]
  suffix = jnp.concatenate([suffix, jnp.zeros((n, 1), jnp.float32)], 1)  # [N, d + 1]
  j = jnp.arange(d + 1, dtype=jnp.float32)
  shifted = jnp.concatenate([jnp.zeros((n, 1), jnp.float32), cf], 1)  # cf[j - 1]
  elevated = suffix - j * shifted
  # The closest remainder-0 point: each coordinate rounded to a multiple of d + 1 (the SSE
  # build of the C++ code, which x86-64 compiles: round half to even of elevated / (d + 1)).
  down_factor = np.float32(1.0 / (d + 1))
  v = jnp.round(elevated * down_factor)
  rem0 = (v * (d + 1)).astype(jnp.int32)
  total = jnp.sum(v, 1).astype(jnp.int32)
  # rank[i]: the position of coordinate i in the sorted order of the differences (C++ order:
  # for i < j, di < dj counts for i, otherwise for j).
  diff = elevated - rem0.astype(jnp.float32)
  less = diff[:, :, None] < diff[:, None, :]  # [N, i, j]: d_i < d_j
  upper = np.triu(np.ones((d + 1, d + 1), bool), 1)  # i < j
  rank = (jnp.sum(less & upper, 2) + jnp.sum(~less & upper, 1)).astype(jnp.int32)
  rank = rank + total[:, None]
  rem0 = jnp.where(rank < 0, rem0 + d + 1, jnp.where(rank > d, rem0 - (d + 1), rem0))
  rank = jnp.where(rank < 0, rank + d + 1, jnp.where(rank > d, rank - (d + 1), rank))
  # Barycentric coordinates.
  v = (elevated - rem0.astype(jnp.float32)) * down_factor
  slots = jnp.arange(d + 2)
  bary = (jnp.sum(v[:, :, None] * (slots == (d - rank)[:, :, None]), 1)
          - jnp.sum(v[:, :, None] * (slots == (d - rank + 1)[:, :, None]), 1))
  bary = bary.at[:, 0].add(1.0 + bary[:, d + 1])[:, :d + 1]
  # Vertex r: key[i] = rem0[i] + canonical[r, rank[i]], canonical[r, k] = r if k <= d - r else
  # r - (d + 1); only the first d coordinates are kept (they sum with the last to 0).
  r = jnp.arange(d + 1, dtype=jnp.int32)[None, :, None]
  rk = rank[:, None, :d]
  keys = rem0[:, None, :d] + jnp.where(rk <= d - r, r, r - (d + 1))
  return keys, bary


def _pack(keys):
  """Key coordinates [..., d] (int16 range, as the C++ `short` keys) packed two to an int32
  word: a list of ceil(d / 2) int32 arrays, equal exactly when the keys are."""
  d = keys.shape[-1]
  words = []
  for i in range(0, d, 2):
    w = keys[..., i]
    if i + 1 < d:
      w = w * 65536 + (keys[..., i + 1] & 0xFFFF)
    words.append(w)
  return words


def _sorted_vertices(features):
  """The simplex vertices sorted by their keys' hash: the keys (in vertex order), the weights,
  the sorted hashes, the order, and where a new lattice point starts in it.

  The sort is of one int64 array, each word packing the key's 32-bit hash, 32 - b bits of a
  second hash and the vertex index (b bits): XLA:CPU sorts a single operand with its native
  comparison, several times faster than the general sort of several operands (hashes, key
  words, the index as payload), which calls a compiled comparator per comparison. A lattice
  point starts where the packed hashes change, so distinct keys equal in both (odds about
  M^2 / 2^(65 - b) for M lattice points) would be merged into one point. A third hash,
  compared between neighbours in the order, finds them, and then the vertices are sorted by
  their whole keys instead (the general sort, exact).
  """
  n, d = features.shape
  keys, bary = _simplex(features)
  flat = keys.reshape(n * (d + 1), d)
  nv = flat.shape[0]
  words = _pack(flat)
  index_bits = max(1, (nv - 1).bit_length())
  extra_bits = 32 - index_bits
  if extra_bits < 0:
    raise ValueError(f'{n} points in {d} dimensions: more lattice vertices than 2^32')
  h = _hash(flat)
  extra = _hash(flat, _HASH_MULT2) >> (32 - extra_bits) if extra_bits else jnp.zeros_like(h)
  with jax.enable_x64(True):
    packed = ((h.astype(jnp.int64) << 32)
              | ((extra.astype(jnp.int64) & ((1 << extra_bits) - 1)) << index_bits)
              | jnp.arange(nv, dtype=jnp.int64))
    packed = jax.lax.sort(packed)
    sh = (packed >> 32).astype(jnp.int32)
    same_hash = (packed[1:] >> index_bits) == (packed[:-1] >> index_bits)
    perm = (packed & ((1 << index_bits) - 1)).astype(jnp.int32)

  # One word per vertex gathered for the check, not the whole key: cheaper, and a miss needs
  # all three hashes equal.
  h3 = jnp.take(_hash(flat, _HASH_MULT3), perm, mode='clip')
  collision = jnp.any(same_hash & (h3[1:] != h3[:-1]))

  def exact():
    sh, *_, perm = jax.lax.sort((h, *words, jnp.arange(nv, dtype=jnp.int32)),
                                num_keys=1 + len(words))
    differs = sh[1:] != sh[:-1]
    for w in words:
      w = jnp.take(w, perm, mode='clip')
      differs |= w[1:] != w[:-1]
    return sh, perm, differs
  sh, perm, new = jax.lax.cond(collision, exact, lambda: (sh, perm, ~same_hash))
  new = jnp.concatenate([jnp.ones((1,), bool), new])
  return flat, bary, sh, perm, new


def build(features, capacity: int | None = None) -> Lattice:
  """The lattice of the points `features` [N, d] (already divided by the standard deviations).

  `capacity` (default N (d + 1)) sizes the table of lattice points; points beyond it are
  dropped, so only pass a smaller value known to hold them all (see `count_points`).
  """
  n, d = features.shape
  flat, bary, sh, perm, new = _sorted_vertices(features)
  nv = n * (d + 1)
  cap = nv if capacity is None else int(capacity)
  ids = jnp.cumsum(new.astype(jnp.int32)) - 1
  num_points = ids[-1] + 1
  ids = jnp.where(ids < cap, ids, cap)  # beyond the capacity: 'absent'
  seg = jnp.zeros((nv,), jnp.int32).at[perm].set(ids, mode='promise_in_bounds')
  # The sort numbers the lattice points in hash order, random with respect to the pixels, so
  # the splat, slice and blur would touch the tables at random (cache misses dominate them on a
  # CPU). Renumber the points in the order of their first vertex (pixel order, as the C++ hash
  # table numbers them): `remap` takes a sorted position to that number, a permutation of
  # [0, cap) (unoccupied slots keep their position) with cap ('absent') kept.
  first = jnp.full((cap + 1,), nv, jnp.int32).at[ids].min(
      perm, indices_are_sorted=True, mode='promise_in_bounds')[:cap]
  is_first = jnp.zeros((nv,), jnp.int32).at[first].set(1, mode='drop')
  rank = jnp.cumsum(is_first) - 1
  remap = jnp.where(first < nv, jnp.take(rank, first, mode='clip'), jnp.arange(cap))
  remap = jnp.concatenate([remap.astype(jnp.int32), jnp.full((1,), cap, jnp.int32)])
  offsets = jnp.take(remap, seg, mode='clip')
  slot = jnp.where(new, ids, cap)
  table_h = jnp.full((cap,), jnp.iinfo(jnp.int32).max, jnp.int32).at[slot].set(sh, mode='drop')
  table_k = jnp.take(flat, first, axis=0, mode='clip')  # unused rows: never matched (`find`)
  table_w = _pack(table_k)
  valid = jnp.arange(cap) < num_points

  def find(query):
    hq = _hash(query)
    qw = _pack(query)
    pos = jnp.searchsorted(table_h, hq, side='left', method='scan')
    found = jnp.full((cap,), cap, jnp.int32)
    for p in reversed(range(_PROBE)):  # the first match wins
      idx = jnp.minimum(pos + p, cap - 1)
      hit = (jnp.take(table_h, idx, mode='clip') == hq) & (pos + p < num_points)
      for tw, w in zip(table_w, qw):
        hit &= jnp.take(tw, idx, mode='clip') == w
      found = jnp.where(hit, idx, found)
    return jnp.where(valid, found, cap)

  # Direction j: n1 = key - 1 with key[j] + d, n2 = key + 1 with key[j] - d (C++ order).
  # n2 is the inverse of n1 (n1(a) = b exactly when n2(b) = a), so one search suffices.
  steps = np.ones((d + 1, d), np.int32)
  steps[np.arange(d), np.arange(d)] = -d
  rows = jnp.arange(cap, dtype=jnp.int32)

  def direction(step):  # one traced search for all directions: a smaller program to compile
    n1 = find(table_k - step)  # in sorted positions; renumbered:
    n1 = jnp.zeros((cap,), jnp.int32).at[remap[:cap]].set(
        jnp.take(remap, n1, mode='clip'), mode='promise_in_bounds',
        unique_indices=True)
    n2 = jnp.full((cap,), cap, jnp.int32).at[n1].set(rows, mode='drop')
    return jnp.stack([n1, n2])
  neighbours = jax.lax.map(direction, jnp.asarray(steps))
  return Lattice(offsets.reshape(n, d + 1), bary, neighbours, num_points)


def count_points(features) -> jax.Array:
  """The number of distinct lattice points of `features` [N, d] (to choose a capacity)."""
  return jnp.sum(_sorted_vertices(features)[-1].astype(jnp.int32))


def filter_values(lattice: Lattice, values, reverse: bool = False):
  """Gaussian-filters `values` [N, C]: splat onto the lattice, blur, slice (C++ `compute`).

  Written for XLA:CPU: the splat is one scatter-add; the blur gathers each table row's two
  neighbours, as the C++ code does (with the points numbered in pixel order this beats
  scattering half of each row to its neighbours, and running over lists of only the existing
  neighbour links gained little more); the slice gathers one simplex vertex at a time ([N, C]
  each, fused with the weighted sum, not [N (d + 1), C]). The blur is about half of the time.
  """
  n, dp1 = lattice.offsets.shape
  cap = lattice.neighbours.shape[-1]
  c = values.shape[1]
  # Row `cap` is the zero row that 'absent' reads and the splat's bin for 'absent'.
  # One scatter in the C++ order of the sums (pixel by pixel, vertex by vertex): faster than one
  # per vertex.
  contrib = (lattice.weights[:, :, None] * values[:, None, :]).reshape(n * dp1, c)
  grid = jnp.zeros((cap + 1, c), values.dtype).at[lattice.offsets.reshape(-1)].add(
      contrib, mode='promise_in_bounds')
  grid = grid.at[cap].set(0.0)
  # Row `cap` reads 'absent' twice, so it stays zero.
  neighbours = jnp.concatenate([lattice.neighbours, jnp.full((dp1, 2, 1), cap, jnp.int32)], -1)

  def blur(i, grid):
    j = dp1 - 1 - i if reverse else i
    # mode='clip': indices are in range by construction, and XLA:CPU's bounds-checked gather
    # ('fill') is several times slower.
    return grid + 0.5 * (jnp.take(grid, neighbours[j, 0], axis=0, mode='clip')
                         + jnp.take(grid, neighbours[j, 1], axis=0, mode='clip'))
  # A loop, not unrolled: unrolled, XLA fuses each direction's gathers into the next one's and
  # recomputes them (measured over twice as slow on XLA:CPU).
  grid = jax.lax.fori_loop(0, dp1, blur, grid)
  alpha = np.float32(1.0 / (1.0 + 2.0 ** (-(dp1 - 1))))
  sliced = lattice.weights[:, 0, None] * jnp.take(grid, lattice.offsets[:, 0], axis=0, mode='clip')
  for r in range(1, dp1):
    sliced += lattice.weights[:, r, None] * jnp.take(grid, lattice.offsets[:, r], axis=0,
                                                     mode='clip')
  return alpha * sliced
