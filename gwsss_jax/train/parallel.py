"""Data parallelism: one per-device train step, run over every device of every host.

A per-device step `step(state, batch) -> (state, metrics, per_example)` is written once, with
`pmean` (`lax.pmean` over AXIS, skipped on one device) where it averages gradients and metrics
and `lax.axis_index(AXIS)` where it needs the device's index (its dropout key). Two wrappers run it:

- `impl='shard_map'` (default): `jax.shard_map` over a 1-D `Mesh` of all devices of all hosts;
  the state is a replicated global `jax.Array`, the batch a global array sharded on its leading
  axis, built from each host's local rows with `jax.make_array_from_process_local_data`.
- `impl='pmap'`: the classic API; the state carries a leading axis of local devices and the
  host-local batch is reshaped to [local_devices, per_device, ...].

Both give the same numbers (tests/test_parallel.py). The shard_map wrapper turns off
`check_vma`: with it on, JAX types replicated parameters as device-invariant and the transpose of
their implicit broadcast already *sums* gradients over devices, so the explicit `pmean` of the
shared step would be wrong by the device count. With it off, shard_map has the per-device
semantics of pmap and the step stays one function for both.
"""

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gwsss_jax.common.errors import UserError

AXIS = 'data'
IMPLS = ('shard_map', 'pmap')


def pmean(tree):
  """`lax.pmean` of `tree` over the data axis, inside a `DataParallel.compile`d step.

  On one device it returns `tree` as is: XLA:CPU still executes a one-participant all-reduce,
  a copy of every gradient, which costs time and buys nothing.
  """
  if jax.lax.axis_size(AXIS) == 1:
    return tree
  return jax.lax.pmean(tree, AXIS)


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all devices of all hosts (or `devices`), axis name `AXIS`."""
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), (AXIS,))


def per_device_batch(global_batch: int, num_devices: int, key: str = 'train.batch_size') -> int:
  """Groups per device; UserError naming `key` when the global batch does not split evenly."""
  if global_batch % num_devices:
    raise UserError(f'config.{key}={global_batch}: the global batch must be divisible by the '
                    f'number of devices ({num_devices}); use a multiple of {num_devices}')
  return global_batch // num_devices


def device_key(root, step):
  """The PRNG key of this device at `step`: fold_in(fold_in(root, step), device index).

  Call inside the per-device step. Dropout differs across devices and steps, and depends only on
  (root, step, device index), so a resumed run draws the same masks as an uninterrupted one.
  """
  return jax.random.fold_in(jax.random.fold_in(root, step), jax.lax.axis_index(AXIS))


StepFn = Callable[[Any, Any], tuple]


@dataclasses.dataclass
class DataParallel:
  """Runs a per-device step over all devices; converts state and batches to and from the host.

  Attributes:
    impl: 'shard_map' or 'pmap'.
    mesh: the 1-D mesh of all devices (the pmap wrapper uses its device order too).
    global_batch: examples (groups) per step over all hosts.
  """
  impl: str
  mesh: Mesh
  global_batch: int
  batch_key: str = 'train.batch_size'

  def __post_init__(self):
    if self.impl not in IMPLS:
      raise UserError(f'config.parallel.impl={self.impl!r}: choose from {", ".join(IMPLS)}')
    self.num_devices = self.mesh.devices.size
    self.per_device = per_device_batch(self.global_batch, self.num_devices, self.batch_key)
    self.local_devices = [d for d in self.mesh.devices.flat
                          if d.process_index == jax.process_index()]
    self.local_batch = self.per_device * len(self.local_devices)
    self._replicated = NamedSharding(self.mesh, P())
    self._sharded = NamedSharding(self.mesh, P(AXIS))
    self._local_sharded = NamedSharding(Mesh(np.asarray(self.local_devices), (AXIS,)), P(AXIS))

  @property
  def process_count(self) -> int:
    return jax.process_count()

  @property
  def process_index(self) -> int:
    return jax.process_index()

  def compile(self, step: StepFn, donate: bool = True) -> Callable:
    """Wraps the per-device `step(state, batch) -> (state, metrics, per_example)`.

    `state` and `metrics` are replicated (the step must pmean what differs across devices);
    `per_example` holds arrays with a leading batch axis, left sharded (read them back with
    `local_rows`). The returned function takes and returns the forms of `replicate` and
    `shard_batch`.
    """
    donate_argnums = (0,) if donate else ()
    if self.impl == 'pmap':
      devices = list(self.mesh.devices.flat) if jax.process_count() == 1 else None
      return jax.pmap(step, axis_name=AXIS, devices=devices, donate_argnums=donate_argnums)
    mapped = jax.shard_map(step, mesh=self.mesh, in_specs=(P(), P(AXIS)),
                           out_specs=(P(), P(), P(AXIS)), check_vma=False)
    return jax.jit(mapped, donate_argnums=donate_argnums)

  def compile_predict(self, fn: Callable) -> Callable:
    """Wraps a per-device `fn(variables, batch) -> per_example` (no collectives needed):
    `variables` replicated, `batch` and the result sharded on the leading axis."""
    if self.impl == 'pmap':
      devices = list(self.mesh.devices.flat) if jax.process_count() == 1 else None
      return jax.pmap(fn, axis_name=AXIS, devices=devices)
    return jax.jit(jax.shard_map(fn, mesh=self.mesh, in_specs=(P(), P(AXIS)),
                                 out_specs=P(AXIS), check_vma=False))

  def replicate(self, tree):
    """Host (or device) pytree -> the state form of the wrapper (same values on every device)."""
    if self.impl == 'pmap':
      n = len(self.local_devices)
      return jax.tree.map(
          lambda x: self._pmap_put(np.broadcast_to(np.asarray(x), (n,) + np.shape(x))), tree)
    return self.to_global(tree)

  def to_global(self, tree):
    """Host pytree (the same on every process) -> global arrays replicated over the mesh."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
        self._replicated, np.asarray(x), np.shape(x)), tree)

  def _pmap_put(self, stacked: np.ndarray):
    # What jax.pmap itself returns: a leading axis split over the local devices.
    return jax.device_put(stacked, self._local_sharded)

  def shard_batch(self, batch):
    """This host's rows [n, ...] -> the batch form of the wrapper (global: n * processes rows).

    Training batches have `local_batch` rows; any multiple of the local device count works
    (evaluation batches)."""
    n_local = len(self.local_devices)
    def put(x):
      x = np.asarray(x)
      if x.shape[0] % n_local:
        raise ValueError(f'host batch of {x.shape[0]} rows does not split over {n_local} '
                         'local devices')
      if self.impl == 'pmap':
        return self._pmap_put(x.reshape((n_local, x.shape[0] // n_local) + x.shape[1:]))
      return jax.make_array_from_process_local_data(
          self._sharded, x, (x.shape[0] * jax.process_count(),) + x.shape[1:])
    return jax.tree.map(put, batch)

  def unreplicate(self, tree):
    """Replicated state or metrics -> host numpy (the values of the first local device)."""
    if self.impl == 'pmap':
      return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)
    return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data), tree)

  def local_rows(self, tree):
    """Per-example outputs -> this host's rows [local_batch, ...] as numpy, in input order."""
    def rows(x):
      if self.impl == 'pmap':
        x = np.asarray(x)
        return x.reshape((-1,) + x.shape[2:])
      shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
      return np.concatenate([np.asarray(s.data) for s in shards], axis=0)
    return jax.tree.map(rows, tree)

