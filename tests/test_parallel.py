"""Data-parallel step: 1 vs 4 devices, shard_map vs pmap, one compilation, per-device keys."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gwsss_jax.common.errors import UserError
from gwsss_jax.train import optim
from gwsss_jax.train import parallel
from gwsss_jax.train import trainer

GLOBAL_BATCH = 4


class Tiny(nn.Module):
  """Conv + BatchNorm-free head; `dropout` exercises the per-device keys."""
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.relu(nn.Conv(4, (3, 3), name='conv')(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(3, name='head')(x.mean(axis=(1, 2)))


def _setup(dropout=0.0, counter=None):
  model = Tiny(dropout)
  params = model.init(jax.random.key(1), jnp.zeros((1, 8, 8, 3)), train=False)['params']

  def loss_fn(p, batch_stats, batch, rng):
    if counter is not None:
      counter.append(1)  # runs only while tracing
    logits = model.apply({'params': p}, batch['x'], train=True, rngs={'dropout': rng})
    loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, batch['y']))
    return loss, ({'logit_mean': logits.mean()}, batch_stats, {'logits': logits})

  sched = optim.step_decay_schedule(0.1, 2, 2, 0.1, 6)
  tx = optim.build_sgd(params, lambda path: 'head' if path[0] == 'head' else 'body',
                       {'head': sched, 'body': sched}, momentum=0.9, nesterov=True,
                       weight_decay=5e-4)
  return params, tx, loss_fn


def _batches(n):
  rng = np.random.default_rng(0)
  return [{'x': rng.normal(size=(GLOBAL_BATCH, 8, 8, 3)).astype(np.float32),
           'y': (rng.random((GLOBAL_BATCH, 3)) > 0.5).astype(np.float32)} for _ in range(n)]


def _train(impl, num_devices, steps=4, dropout=0.0, counter=None):
  params, tx, loss_fn = _setup(dropout, counter)
  dp = parallel.DataParallel(impl, parallel.make_mesh(jax.devices()[:num_devices]), GLOBAL_BATCH)
  step = dp.compile(trainer.make_train_step(loss_fn, tx))
  state = dp.replicate(trainer.init_state(params, {}, tx, seed=0))
  losses, logits = [], []
  for batch in _batches(steps):
    state, scalars, per_example = step(state, dp.shard_batch(batch))
    losses.append(float(dp.unreplicate(scalars)['loss']))
    logits.append(dp.local_rows(per_example)['logits'])
  return dp.unreplicate(state), np.array(losses), np.stack(logits)


def _assert_trees_close(a, b, rtol, atol=1e-7):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def test_one_vs_four_devices_same_loss_and_params():
  # Without dropout the step is a deterministic function of the global batch; the only
  # difference is the order of the floating-point reduction over examples (a sum on one device
  # vs per-device means averaged by pmean), hence a relative tolerance of 1e-5.
  s1, l1, o1 = _train('shard_map', 1)
  s4, l4, o4 = _train('shard_map', 4)
  np.testing.assert_allclose(l1, l4, rtol=1e-5)
  np.testing.assert_allclose(o1, o4, rtol=1e-5, atol=1e-6)
  _assert_trees_close(s1['params'], s4['params'], rtol=1e-5)
  _assert_trees_close(s1['opt_state'], s4['opt_state'], rtol=1e-5, atol=1e-7)
  assert int(s4['step']) == 4


def test_shard_map_and_pmap_agree():
  sm, lsm, osm = _train('shard_map', 4, dropout=0.5)
  pm, lpm, opm = _train('pmap', 4, dropout=0.5)
  np.testing.assert_allclose(lsm, lpm, rtol=1e-6)
  np.testing.assert_allclose(osm, opm, rtol=1e-6, atol=1e-7)
  _assert_trees_close(sm['params'], pm['params'], rtol=1e-6)


@pytest.mark.parametrize('impl', ['shard_map', 'pmap'])
def test_step_compiles_once(impl):
  counter = []
  _train(impl, 4, steps=3, counter=counter)
  assert len(counter) == 1


@pytest.mark.parametrize('impl', ['shard_map', 'pmap'])
def test_all_reduce_only_across_devices(impl):
  """`parallel.pmean` emits the all-reduce on 4 devices and none on 1 (where it is a copy)."""
  params, tx, loss_fn = _setup()
  for num_devices, expected in ((1, False), (4, True)):
    dp = parallel.DataParallel(impl, parallel.make_mesh(jax.devices()[:num_devices]),
                               GLOBAL_BATCH)
    step = dp.compile(trainer.make_train_step(loss_fn, tx))
    state = dp.replicate(trainer.init_state(params, {}, tx, seed=0))
    hlo = step.lower(state, dp.shard_batch(_batches(1)[0])).as_text()
    assert ('all_reduce' in hlo or 'all-reduce' in hlo) == expected, (impl, num_devices)


def test_device_keys_differ_and_follow_the_formula():
  root = jax.random.key_data(jax.random.key(7))

  def step(state, batch):
    key = parallel.device_key(state['rng'], state['step'])
    return state, {}, {'u': jax.random.uniform(key, (batch['x'].shape[0],))}

  dp = parallel.DataParallel('shard_map', parallel.make_mesh(), 8)
  fn = dp.compile(step, donate=False)
  state = dp.replicate({'rng': root, 'step': np.int32(5)})
  _, _, out = fn(state, dp.shard_batch({'x': np.zeros((8, 1), np.float32)}))
  got = dp.local_rows(out)['u'].reshape(4, 2)
  expected = np.stack([np.asarray(jax.random.uniform(
      jax.random.fold_in(jax.random.fold_in(root, 5), d), (2,))) for d in range(4)])
  np.testing.assert_array_equal(got, expected)
  assert len({tuple(r) for r in got}) == 4


def test_indivisible_batch_names_the_key():
  with pytest.raises(UserError, match='train.batch_size'):
    parallel.DataParallel('shard_map', parallel.make_mesh(), 6)


def test_local_rows_keep_input_order():
  dp = parallel.DataParallel('pmap', parallel.make_mesh(), 8)
  fn = dp.compile(lambda s, b: (s, {}, {'x': b['x'] * 2}), donate=False)
  _, _, out = fn(dp.replicate({'a': np.zeros(())}), dp.shard_batch({'x': np.arange(8.)}))
  np.testing.assert_array_equal(dp.local_rows(out)['x'], np.arange(8.) * 2)
