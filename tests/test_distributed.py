"""Two processes with `jax.distributed` on this machine (CPU collectives over gloo, 2 devices
each) train in lock-step and agree with one process on 4 devices; both write one checkpoint.

Each process feeds only its own rows of the global batch, as the input pipeline does with
process_index/process_count. The global device order (process 0's devices first) matches the
single-process one, so even the per-device dropout keys are the same.
"""

import os
import socket
import subprocess
import sys

import pytest
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gwsss_jax.train import optim
from gwsss_jax.train import parallel
from gwsss_jax.train import trainer

BATCH = 8
STEPS = 3
IMPLS = ('shard_map', 'pmap')


class Net(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.relu(nn.Dense(16, name='hidden')(x))
    x = nn.Dropout(0.5, deterministic=not train)(x)
    return nn.Dense(3, name='head')(x)


def _batch(step):
  rng = np.random.default_rng(step)
  return {'x': rng.normal(size=(BATCH, 6)).astype(np.float32),
          'y': (rng.random((BATCH, 3)) > 0.5).astype(np.float32)}


def train(impl):
  """STEPS steps on all devices of all processes; this process feeds its rows only."""
  model = Net()
  params = model.init(jax.random.key(0), jnp.zeros((1, 6)), train=False)['params']

  def loss_fn(p, batch_stats, batch, rng):
    logits = model.apply({'params': p}, batch['x'], train=True, rngs={'dropout': rng})
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, batch['y'])), (
        {}, batch_stats, {'logits': logits})

  tx = optim.build_sgd(params, lambda path: path[0], {'hidden': lambda s: 0.1, 'head': lambda s: 1.0},
                       momentum=0.9, nesterov=True, weight_decay=5e-4)
  dp = parallel.DataParallel(impl, parallel.make_mesh(), BATCH)
  step_fn = dp.compile(trainer.make_train_step(loss_fn, tx))
  state = trainer.from_checkpoint(dp, trainer.init_state(params, {}, tx, seed=1))
  rows = slice(dp.process_index * dp.local_batch, (dp.process_index + 1) * dp.local_batch)
  losses = []
  for s in range(STEPS):
    batch = jax.tree.map(lambda x: x[rows], _batch(s))
    state, scalars, _ = step_fn(state, dp.shard_batch(batch))
    losses.append(float(dp.unreplicate(scalars)['loss']))
  return state, dp, np.array(losses)


def _flat(state, dp):
  host = dp.unreplicate(state)
  return {'/'.join(map(str, k)): np.asarray(v) for k, v in
          flax.traverse_util.flatten_dict(host['params']).items()}


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_agree_with_one(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  port = _free_port()
  procs = []
  for pid in range(2):
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
               JAX_PLATFORMS='cpu', JAX_COORDINATOR_ADDRESS=f'localhost:{port}',
               JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(pid),
               PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get('PYTHONPATH')) if p))
    procs.append(subprocess.Popen([sys.executable, __file__, str(tmp_path)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outputs = [p.communicate(timeout=240)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out
  for impl in IMPLS:
    state, dp, losses = train(impl)
    expected = _flat(state, dp)
    for pid in range(2):
      got = np.load(tmp_path / f'{impl}_{pid}.npz')
      np.testing.assert_allclose(got['losses'], losses, rtol=1e-6)
      for k, v in expected.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-6, atol=1e-7, err_msg=f'{impl} {k}')
  # Both processes took part in one orbax checkpoint, written once.
  assert sorted(os.listdir(tmp_path / 'ckpt')) == [str(STEPS)]


if __name__ == '__main__':
  from gwsss_jax.train import checkpoint  # pylint: disable=g-import-not-at-top
  from gwsss_jax.train import distributed  # pylint: disable=g-import-not-at-top
  distributed.initialize(True)
  assert jax.process_count() == 2 and jax.device_count() == 4
  for impl in IMPLS:
    state, dp, losses = train(impl)
    np.savez(os.path.join(sys.argv[1], f'{impl}_{jax.process_index()}.npz'), losses=losses,
             **_flat(state, dp))
  ckpt = checkpoint.Checkpointer(os.path.join(sys.argv[1], 'ckpt'))
  ckpt.save(STEPS, trainer.to_checkpoint(dp, state), force=True)
  ckpt.wait()
  ckpt.close()
