"""Checkpoints: kill -9 (mid-save) and resume gives bitwise the same parameters; N -> M devices;
the NaN guard stops before saving a bad state.

The kill-and-resume test runs the generic loop (`trainer.fit`) on a small model in a subprocess
(this file run as a script); test_train_cls.py does the same with the real stage.
"""

import os
import random
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gwsss_jax.common.errors import UserError
from gwsss_jax.train import checkpoint
from gwsss_jax.train import optim
from gwsss_jax.train import parallel
from gwsss_jax.train import trainer

BATCH = 4
TOTAL = 14
EVERY = 3


class Net(nn.Module):
  """Wide enough (about 4 MB of state) that a save takes long enough to be interrupted."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.relu(nn.Dense(512, name='wide')(x))
    x = nn.Dropout(0.3, deterministic=not train)(x)
    return nn.Dense(3, name='head')(x)


def _setup():
  model = Net()
  params = model.init(jax.random.key(0), jnp.zeros((1, 512)), train=False)['params']

  def loss_fn(p, batch_stats, batch, rng):
    logits = model.apply({'params': p}, batch['x'], train=True, rngs={'dropout': rng})
    loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, batch['y'])) * batch['scale'][0]
    return loss, ({}, batch_stats, {})

  tx = optim.build_sgd(params, lambda path: path[0],
                       {'wide': optim.step_decay_schedule(0.01, 5, 2, 0.1, 3),
                        'head': optim.step_decay_schedule(0.1, 5, 2, 0.1, 3)},
                       momentum=0.9, nesterov=True, weight_decay=5e-4)
  return params, tx, loss_fn


class _NullWriter:
  """The part of clu's MetricWriter that `fit` uses."""

  def write_scalars(self, step, scalars):
    del step, scalars

  def flush(self):
    pass

  def close(self):
    pass


def _batch(step, nan_at=-1, blow_at=-1):
  """The batch of `step` is a function of the step alone (as the real input pipeline).
  `nan_at`: that step's loss is NaN; `blow_at`: that step's loss is finite but so large that
  the update it makes leaves parameters whose own loss is not."""
  rng = np.random.default_rng(step)
  scale = np.nan if step == nan_at else 1e36 if step == blow_at else 1.0
  return {'x': rng.normal(size=(BATCH, 512)).astype(np.float32),
          'y': (rng.random((BATCH, 3)) > 0.5).astype(np.float32),
          'scale': np.full((BATCH,), scale, np.float32)}


def train(workdir, impl='shard_map', num_devices=4, nan_at=-1, sleep=0.0, blow_at=-1,
          on_step=None, before_save=None, wrap_step=None):
  """Trains to TOTAL steps from the latest checkpoint in `workdir`; returns the host state.
  `on_step`, `before_save`: `Fit`'s callbacks; `wrap_step(step_fn)`: the step `fit` calls."""
  params, tx, loss_fn = _setup()
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'ckpt'), max_to_keep=2)
  start, state = ckpt.restore_latest(trainer.abstract_state(params, {}, tx))
  start = start or 0
  if not start:
    state = trainer.init_state(params, {}, tx, seed=3)
  dp = parallel.DataParallel(impl, parallel.make_mesh(jax.devices()[:num_devices]), BATCH)
  step_fn = dp.compile(trainer.make_train_step(loss_fn, tx))
  if wrap_step is not None:
    step_fn = wrap_step(step_fn)

  def batches():
    for s in range(start, TOTAL):
      time.sleep(sleep)
      yield _batch(s, nan_at, blow_at)

  spec = trainer.Fit(name='toy', total_steps=TOTAL, steps_per_epoch=5, log_every=1,
                     checkpoint_every=EVERY, on_step=on_step, before_save=before_save,
                     check_step=dp.compile(trainer.make_check_step(loss_fn), donate=False))
  writer = _NullWriter()  # clu's writers import TensorFlow: seconds per subprocess
  try:
    state, _ = trainer.fit(dp, step_fn, trainer.from_checkpoint(dp, state), batches(), spec,
                           ckpt, writer, os.path.join(workdir, 'tb'))
  finally:
    ckpt.close()
    writer.close()
  return dp.unreplicate(state)


def _worker_env():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (root, os.environ.get('PYTHONPATH')) if p))


def _run_worker(workdir, kill_at_step):
  """Runs `train` in a subprocess and SIGKILLs it at the first checkpoint save in progress at
  or after `kill_at_step` (a temporary orbax directory on disk)."""
  os.makedirs(workdir, exist_ok=True)
  log_path = os.path.join(workdir, f'worker_{time.time_ns()}.log')
  with open(log_path, 'w') as log:
    proc = subprocess.Popen([sys.executable, __file__, workdir], stdout=log,
                            stderr=subprocess.STDOUT, env=_worker_env())
  read_log = lambda: open(log_path).read()
  ckpt_dir = os.path.join(workdir, 'ckpt')
  step, caught = 0, None
  deadline = time.time() + 300
  while proc.poll() is None and time.time() < deadline:
    if step < kill_at_step:
      lines = [l for l in read_log().splitlines() if l.startswith('[toy] step ')]
      step = int(lines[-1].split()[2].split('/')[0]) if lines else 0
      time.sleep(0.01)
      continue
    tmp = [d for d in os.listdir(ckpt_dir) if 'tmp' in d] if os.path.isdir(ckpt_dir) else []
    if tmp:
      caught = tmp
      proc.send_signal(signal.SIGKILL)
      break
    time.sleep(0.0005)
  proc.wait()
  assert caught, f'no save caught in progress after step {kill_at_step}:\n{read_log()}'
  return caught


@pytest.mark.slow
def test_kill_mid_save_and_resume_is_bitwise_identical(tmp_path):
  # Only the run to kill is a subprocess; the uninterrupted run and the resumed one run here,
  # on the same 4 simulated devices and so the same compiled program.
  interrupted = str(tmp_path / 'interrupted')
  kill_at = random.Random().randint(1, TOTAL - EVERY - 1)
  caught = _run_worker(interrupted, kill_at_step=kill_at)
  ckpt = checkpoint.Checkpointer(os.path.join(interrupted, 'ckpt'))
  assert (ckpt.latest_step() or 0) < TOTAL
  ckpt.close()
  resumed = train(interrupted)
  reference = train(str(tmp_path / 'reference'))
  for x, y in zip(jax.tree.leaves(resumed), jax.tree.leaves(reference)):
    np.testing.assert_array_equal(x, y, err_msg=f'killed at {caught}')
  assert not [d for d in os.listdir(os.path.join(interrupted, 'ckpt')) if 'tmp' in d]


def test_on_step_runs_one_step_late_in_order_and_catches_up_before_each_save(tmp_path):
  """`on_step` of a step runs once the next step is dispatched (its host work overlaps the
  device's next step), for every step in order, and before each checkpoint for all steps up to
  it (the OAA store flushed by `before_save` must match the checkpoint)."""
  events = []

  def wrap_step(step_fn):
    def step(state, batch):
      events.append(('step', len([e for e in events if e[0] == 'step']) + 1))
      return step_fn(state, batch)
    return step

  def on_step(step, host_batch, per_example):
    del per_example
    np.testing.assert_array_equal(host_batch['x'], _batch(step - 1)['x'])  # that step's batch
    events.append(('on_step', step))

  train(str(tmp_path), on_step=on_step, before_save=lambda: events.append(('save', None)),
        wrap_step=wrap_step)
  assert [s for kind, s in events if kind == 'on_step'] == list(range(1, TOTAL + 1))
  saves = [s for s in range(1, TOTAL + 1) if s % EVERY == 0 or s % 5 == 0 or s == TOTAL]
  expected, done = [], 0
  for s in range(1, TOTAL + 1):
    expected.append(('step', s))
    if s - 1 > done:  # the previous step's callback, after this step's dispatch
      expected.append(('on_step', s - 1))
      done = s - 1
    if s in saves:
      expected += [('on_step', s), ('save', None)]
      done = s
  assert events == expected


def test_restore_on_other_device_counts_and_impls(tmp_path):
  state = train(str(tmp_path), 'shard_map', 4)
  params, tx, _ = _setup()
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ckpt'))
  assert ckpt.latest_step() == TOTAL
  host = ckpt.restore(trainer.abstract_state(params, {}, tx))
  for impl, n in (('shard_map', 1), ('shard_map', 2), ('pmap', 4)):
    dp = parallel.DataParallel(impl, parallel.make_mesh(jax.devices()[:n]), BATCH)
    back = dp.unreplicate(trainer.from_checkpoint(dp, host))
    for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(state)):
      np.testing.assert_array_equal(x, y)
  ckpt.close()


def test_nan_stops_before_saving_the_bad_state(tmp_path):
  with pytest.raises(UserError, match='step 8'):
    train(str(tmp_path), nan_at=7)  # the 8th step (0-based batch 7) diverges
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ckpt'))
  assert ckpt.latest_step() == 6
  params, tx, _ = _setup()
  host = ckpt.restore(trainer.abstract_state(params, {}, tx))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(host['params']))
  ckpt.close()


def test_a_blown_up_state_is_not_saved_although_its_step_loss_was_finite(tmp_path):
  # Batch 5 (the 6th step, an epoch-end save) has a finite loss of about 1e36 whose update
  # leaves parameters that give a non-finite loss: that state must not become a checkpoint.
  with pytest.raises(UserError, match=r'parameters after step 6 .*the last good checkpoint is '
                                      r'step 5 in'):
    train(str(tmp_path), blow_at=5)
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ckpt'))
  assert ckpt.latest_step() == 5
  ckpt.close()


def _largest_file(directory):
  files = [os.path.join(r, f) for r, _, names in os.walk(directory) for f in names]
  return max(files, key=os.path.getsize)


@pytest.mark.parametrize('damage', ['truncated data file', 'deleted _METADATA'])
def test_corrupt_newest_checkpoint_warns_and_resumes_from_the_previous_one(
    tmp_path, capsys, damage):
  reference = train(str(tmp_path / 'reference'))
  workdir = str(tmp_path / 'run')
  train(workdir)
  ckpt_dir = os.path.join(workdir, 'ckpt')
  assert sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) == [12, TOTAL]
  newest = os.path.join(ckpt_dir, str(TOTAL))
  if damage == 'truncated data file':
    with open(_largest_file(newest), 'r+b') as f:
      f.truncate(100)
  else:
    os.remove(os.path.join(newest, 'default', '_METADATA'))
  capsys.readouterr()
  resumed = train(workdir)
  err = capsys.readouterr().err
  assert f'checkpoint {newest} is unreadable' in err and 'resuming from step 12' in err, err
  assert 'does not match' not in err
  assert os.path.isdir(newest + '.corrupt')
  for x, y in zip(jax.tree.leaves(resumed), jax.tree.leaves(reference)):
    np.testing.assert_array_equal(x, y)


def test_checkpoint_of_another_model_is_a_mismatch_naming_the_leaf(tmp_path):
  train(str(tmp_path))
  params, tx, _ = _setup()
  params['wide']['kernel'] = np.zeros((512, 256), np.float32)
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ckpt'))
  with pytest.raises(UserError, match=r'does not match the model.*wide/kernel: shape '
                                      r'\(512, 512\) in the checkpoint, \(512, 256\) in the model'):
    ckpt.restore_latest(trainer.abstract_state(params, {}, tx))
  assert ckpt.latest_step() == TOTAL  # a mismatch is not set aside
  ckpt.close()


def test_disk_full_during_a_checkpoint_is_one_line_and_keeps_the_earlier_one(small_disk):
  # About 2 MB of state (params and momentum) on a 3 MB disk: the save of step 3 fits, that
  # of step 5 does not.
  proc = subprocess.run([sys.executable, __file__, str(small_disk)], capture_output=True,
                        text=True, env=_worker_env(), timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and errors[0].startswith(
      f'error: no space left on device writing the checkpoint of step 5 to '
      f'{small_disk}/ckpt ('), proc.stderr[-3000:]
  assert 'left there, about 2.0 MB needed' in errors[0]
  ckpt = checkpoint.Checkpointer(str(small_disk / 'ckpt'))
  assert ckpt.all_steps() == [3]
  params, tx, _ = _setup()
  assert int(ckpt.restore(trainer.abstract_state(params, {}, tx))['step']) == 3
  ckpt.close()


if __name__ == '__main__':
  from gwsss_jax.common import cli  # pylint: disable=g-import-not-at-top
  cli.run(lambda argv: train(argv[1]))


def test_unfinished_step_directories_are_removed_before_the_manager_opens(tmp_path):
  # A killed save leaves `<step>.orbax-checkpoint-tmp[-<time>]`; opening two Checkpointers one
  # after the other on that directory used to race two background deletes of the same files.
  directory = str(tmp_path / 'ckpt')
  first = checkpoint.Checkpointer(directory, asynchronous=False)
  first.save(1, {'w': np.arange(3.0)}, force=True)
  first.close()
  for name in ('2.orbax-checkpoint-tmp', '3.orbax-checkpoint-tmp-1700000000'):
    os.makedirs(os.path.join(directory, name, 'default.orbax-checkpoint-tmp', 'd'))
    with open(os.path.join(directory, name, 'default.orbax-checkpoint-tmp', 'd', 'x'), 'wb') as f:
      f.write(b'partial')
  probe = checkpoint.Checkpointer(directory)
  assert sorted(os.listdir(directory)) == ['1']
  assert probe.latest_step() == 1
  probe.close()
  again = checkpoint.Checkpointer(directory)
  again.save(2, {'w': np.arange(3.0) + 1}, force=True)
  again.wait()
  np.testing.assert_array_equal(again.restore({'w': np.zeros(3)})['w'], np.arange(3.0) + 1)
  again.close()
