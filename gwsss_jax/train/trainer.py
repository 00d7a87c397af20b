"""Model-agnostic pieces of a data-parallel training loop (train_cls and train_seg use them).

- `init_state` / `make_train_step`: the state pytree and the per-device step
  (forward, loss, grads, `pmean` over devices, optax update) for `parallel.DataParallel`.
- `prefetch`: keeps the next batches on the devices while the current step runs.
- `fit`: the loop: steps, console/TensorBoard logging, periodic evaluation, the NaN guard,
  checkpoints every N steps, at each epoch end and at the end, resume-friendly hooks.

The state is a plain dict {'step', 'params', 'batch_stats', 'opt_state', 'rng'} (a pytree orbax
saves as is). `rng` is the root key; a step's dropout key is derived from (rng, step, device),
and the input pipeline's position is the step, so the state alone determines the rest of a run.
"""

import collections
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import jax
import jax.numpy as jnp
import optax
from absl import logging

from gwsss_jax.common import console
from gwsss_jax.train import parallel
from gwsss_jax.train import writers

# loss_fn(params, batch_stats, batch, rng) -> (loss, (scalars, new_batch_stats, per_example))
LossFn = Callable[[Any, Any, Any, Any], tuple]


def init_state(params, batch_stats, tx: optax.GradientTransformation, seed: int) -> dict:
  """The train state at step 0 (`DataParallel.replicate` puts it on the devices)."""
  return {'step': jnp.zeros((), jnp.int32), 'params': params, 'batch_stats': batch_stats or {},
          'opt_state': tx.init(params), 'rng': jax.random.key_data(jax.random.key(seed))}


def run_init(init_fn: Callable, *args):
  """Runs a model's `init` once, compiled without XLA's backend optimisations on CPU.

  XLA:CPU spends most of an init's compile time optimising the random initialisers, an
  order of magnitude more than at level 0, for code that runs once.
  """
  lowered = jax.jit(init_fn).lower(*args)
  options = {'xla_backend_optimization_level': 0} if jax.default_backend() == 'cpu' else None
  return lowered.compile(compiler_options=options)(*args)


def abstract_state(params, batch_stats, tx: optax.GradientTransformation) -> dict:
  """Shapes and dtypes of the train state (a restore template; nothing is computed)."""
  return jax.eval_shape(lambda p, b: init_state(p, b, tx, 0), params, batch_stats)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, *,
                    update_batch_stats: bool = False) -> Callable:
  """The per-device step `(state, batch) -> (state, scalars, per_example)`.

  `loss_fn` sees this device's rows of the batch and its own dropout key
  (`parallel.device_key`); gradients, scalars (and BatchNorm statistics when
  `update_batch_stats`) are averaged over all devices with `parallel.pmean`, so every device applies
  the same update: the mean-loss gradient of the global batch.
  """
  def step(state, batch):
    rng = parallel.device_key(jnp.asarray(state['rng'], jnp.uint32), state['step'])
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (scalars, batch_stats, per_example)), grads = grad_fn(
        state['params'], state['batch_stats'], batch, rng)
    grads = parallel.pmean(grads)
    scalars = parallel.pmean(dict(scalars, loss=loss))
    if update_batch_stats:
      batch_stats = parallel.pmean(batch_stats)
    else:
      batch_stats = state['batch_stats']
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    new_state = {'step': state['step'] + 1, 'params': optax.apply_updates(state['params'],
                                                                           updates),
                 'batch_stats': batch_stats, 'opt_state': opt_state, 'rng': state['rng']}
    return new_state, scalars, per_example
  return step


def make_check_step(loss_fn: LossFn) -> Callable:
  """The per-device test that a state is fit to be saved, `(state, batch) -> (scalars, {}, {})`
  for `DataParallel.compile(..., donate=False)`: scalars {'finite', 'loss'}, whether every
  parameter is finite (1.0) and the loss that the state's own parameters give on `batch`.

  A step's loss is that of the parameters before its update, so a finite loss does not vouch
  for the parameters the step leaves: a huge update can leave finite weights whose own forward
  pass is NaN. No update is made.
  """
  def check(state, batch):
    rng = parallel.device_key(jnp.asarray(state['rng'], jnp.uint32), state['step'])
    loss, _ = loss_fn(state['params'], state['batch_stats'], batch, rng)
    leaves = jax.tree.leaves(state['params'])
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
    return parallel.pmean({'finite': finite.astype(jnp.float32), 'loss': loss}), {}, {}
  return check


def prefetch(batches: Iterable, put: Callable, size: int = 2) -> Iterator[tuple]:
  """Yields (host_batch, device_batch), with `size` batches already transferred ahead.

  JAX dispatches asynchronously, so the transfer of the next batches overlaps the running step
  (the host pipeline itself runs in tf.data's threads).
  """
  queue = collections.deque()
  iterator = iter(batches)
  def fill():
    while len(queue) < size:
      try:
        host = next(iterator)
      except StopIteration:
        return
      queue.append((host, put(host)))
  fill()
  while queue:
    item = queue.popleft()
    fill()
    yield item


class Fit:
  """What `fit` needs besides the step; callbacks are optional (None = skipped).

  Attributes:
    name: prefix of logs and summaries ('train_cls').
    total_steps: the step at which training ends.
    steps_per_epoch: epoch length (checkpoints and evaluation at epoch ends); 0 = no epochs.
    log_every, checkpoint_every: intervals in steps.
    eval_every_epochs: evaluation interval (epochs), with `evaluate(state) -> scalars`.
    images_per_step: images of one global batch (for images/s).
    learning_rates: {group: schedule} logged as lr/<group>.
    on_step(step, host_batch, per_example): after each step (e.g. OAA accumulation), in step
      order, but one step late: `fit` calls it for a step once the next step is dispatched, so
      that reading the step's outputs on the host overlaps the device's next step instead of
      waiting for each step to end. Before a checkpoint and at the end it is called for every
      step done.
    before_save(): right before every checkpoint (e.g. flush side stores), after `on_step` for
      every step up to the checkpoint's.
    device_keys: the batch entries the step needs (None = all); the others stay on the host
      for `on_step`.
    lr_key: the config key a divergence message tells the user to lower.
    check_step: `DataParallel.compile(make_check_step(loss_fn), donate=False)`; when given,
      a state is saved only if its parameters are finite and give a finite loss on the step's
      batch (else the run stops: the checkpoint on disk stays the last good one).
  """

  def __init__(self, *, name: str, total_steps: int, steps_per_epoch: int = 0,
               log_every: int = 50, checkpoint_every: int = 500, eval_every_epochs: int = 1,
               images_per_step: int = 1, profile_steps: int = 0,
               learning_rates: Optional[Mapping[str, Callable]] = None,
               evaluate: Optional[Callable[[Any], dict]] = None,
               on_step: Optional[Callable[[int, Any, Any], None]] = None,
               before_save: Optional[Callable[[], None]] = None,
               device_keys: Optional[tuple] = None, lr_key: str = 'train.base_lr',
               check_step: Optional[Callable] = None):
    self.name = name
    self.total_steps = total_steps
    self.steps_per_epoch = steps_per_epoch
    self.log_every = max(int(log_every), 1)
    self.checkpoint_every = max(int(checkpoint_every), 1)
    self.eval_every_epochs = max(int(eval_every_epochs), 1)
    self.images_per_step = images_per_step
    self.profile_steps = profile_steps
    self.learning_rates = dict(learning_rates or {})
    self.evaluate = evaluate
    self.on_step = on_step
    self.before_save = before_save
    self.device_keys = device_keys
    self.lr_key = lr_key
    self.check_step = check_step

  def to_device(self, dp: parallel.DataParallel, host_batch):
    if self.device_keys is not None:
      host_batch = {k: host_batch[k] for k in self.device_keys}
    return dp.shard_batch(host_batch)


def fit(dp: parallel.DataParallel, train_step: Callable, state, batches: Iterable,
        spec: Fit, checkpointer, writer, logdir: str) -> tuple[Any, dict]:
  """Runs `train_step` from `state`'s step to `spec.total_steps`.

  Args:
    dp: the `DataParallel` that compiled `train_step` (and holds `state`).
    train_step: `dp.compile(make_train_step(...))`.
    state: replicated train state (`from_checkpoint`), at the step where `batches` starts.
    batches: host batches (this process's rows) from the state's step on.
    spec: intervals and callbacks (`Fit`).
    checkpointer: a `checkpoint.Checkpointer`; every process calls it.
    writer: a clu metric writer (`writers.create_writer`).
    logdir: where `Profile` traces go.
  Returns:
    (final state, the last logged scalars merged with the last evaluation).
  Raises:
    UserError: the loss became NaN/Inf (the checkpoint on disk is the last good one).
  """
  step = int(dp.unreplicate(state['step']))
  pending = []  # (step, host_batch, per_example) of the step whose `on_step` is still due

  def drain():
    while pending:
      spec.on_step(*pending.pop(0))
  loop = _Loop(dp, spec, checkpointer, writer, step, drain)
  hooks = writers.periodic_hooks(logdir, num_train_steps=spec.total_steps,
                                 profile_steps=spec.profile_steps)
  try:
    for host_batch, batch in prefetch(batches, lambda b: spec.to_device(dp, b)):
      if step >= spec.total_steps:
        break
      state, scalars, per_example = train_step(state, batch)
      step += 1
      loop.guard.add(step, scalars['loss'])
      loop.meter.add(scalars)
      if spec.on_step is not None:
        drain()  # the previous step's, while this one runs on the device
        pending.append((step, host_batch, per_example))
      for hook in hooks:
        hook(step)
      loop.after_step(step, state, batch)
    drain()
  finally:  # a save in flight holds a good state: let it finish, also on errors
    loop.bar.close()
    writer.flush()
    checkpointer.wait()
  if step < spec.total_steps:
    logging.warning('%s: input ended at step %d of %d', spec.name, step, spec.total_steps)
  return state, loop.last


class _Loop:
  """What `fit` does between steps: logging, evaluation, the NaN guard and checkpoints."""

  def __init__(self, dp, spec: Fit, checkpointer, writer, step: int,
               drain: Callable[[], None] = lambda: None):
    self.dp, self.spec, self.checkpointer, self.writer = dp, spec, checkpointer, writer
    self.drain = drain  # runs the `on_step` calls still due
    self.guard = writers.NanGuard(checkpointer.directory, spec.lr_key,
                                  latest_step=checkpointer.latest_step)
    self.meter = writers.MeanMeter()
    self.last = {}
    self._tick, self._tick_step = time.time(), step
    self.bar = console.progress(spec.total_steps, spec.name, unit='step', initial=step)

  def after_step(self, step: int, state, batch) -> None:
    spec = self.spec
    self.bar.update(1)
    epoch_end = spec.steps_per_epoch > 0 and step % spec.steps_per_epoch == 0
    final = step == spec.total_steps
    if step % spec.log_every == 0 or final:
      self._log(step)
    if spec.evaluate is not None and (final or (
        epoch_end and (step // spec.steps_per_epoch) % spec.eval_every_epochs == 0)):
      self._evaluate(step, state)
    if step % spec.checkpoint_every == 0 or epoch_end or final:
      self._save(step, state, batch)

  def _print(self, name: str, step: int, scalars: dict) -> None:
    if jax.process_index() == 0:
      console.line(writers.progress_line(name, step, self.spec.total_steps, scalars))

  def _log(self, step: int) -> None:
    self.guard.check(self.dp.unreplicate)
    name = self.spec.name
    scalars = {f'{name}/{k}': v for k, v in self.meter.pop(self.dp.unreplicate).items()}
    elapsed = max(time.time() - self._tick, 1e-9)
    scalars[f'{name}/steps_per_sec'] = (step - self._tick_step) / elapsed
    scalars[f'{name}/images_per_sec'] = (
        (step - self._tick_step) * self.spec.images_per_step / elapsed)
    for group, schedule in self.spec.learning_rates.items():
      scalars[f'{name}/lr/{group}'] = float(schedule(step - 1))
    if self.spec.steps_per_epoch:
      scalars[f'{name}/epoch'] = step / self.spec.steps_per_epoch
    self.writer.write_scalars(step, scalars)
    self._print(name, step, scalars)
    self.last.update(scalars)
    self._tick, self._tick_step = time.time(), step

  def _evaluate(self, step: int, state) -> None:
    start = time.time()
    results = {f'{self.spec.name}/{k}': float(v) for k, v in self.spec.evaluate(state).items()}
    results[f'{self.spec.name}/eval_seconds'] = time.time() - start
    self.writer.write_scalars(step, results)
    self._print(self.spec.name + ' eval', step, results)
    self.last.update(results)
    self._tick, self._tick_step = time.time(), step  # keep evaluation out of steps/s

  def _save(self, step: int, state, batch) -> None:
    self.guard.check(self.dp.unreplicate)
    if self.spec.check_step is not None:
      scalars = self.dp.unreplicate(self.spec.check_step(state, batch)[0])
      self.guard.check_state(step, bool(scalars['finite']), float(scalars['loss']))
    self.drain()  # the side stores then hold every step up to this checkpoint's
    if self.spec.before_save is not None:
      self.spec.before_save()
    self.checkpointer.save(step, to_checkpoint(self.dp, state), force=True)


def to_checkpoint(dp: parallel.DataParallel, state):
  """The replicated state as orbax saves it: global arrays without a device axis."""
  if dp.impl == 'pmap':
    return dp.to_global(dp.unreplicate(state))
  return state


def from_checkpoint(dp: parallel.DataParallel, host_state):
  """A restored (or freshly initialised) state -> the replicated state of `dp`, on however
  many devices `dp` has (a checkpoint written on N devices restores on M)."""
  return dp.replicate(host_state)
