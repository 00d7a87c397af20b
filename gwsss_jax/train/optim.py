"""SGD as PyTorch's `torch.optim.SGD` does it, with learning-rate groups by parameter path.

PyTorch's SGD adds the weight decay to the gradient before the momentum buffer
(`g += wd * p; buf = m * buf + g; g = g + m * buf` with Nesterov; `p -= lr * g`) and applies
each parameter group's own learning rate last. Here that is, per group,
`chain(add_decayed_weights(wd), trace(m, nesterov), scale_by_learning_rate(schedule))`, and
`multi_transform` routes every parameter to its group by path. Frozen parameters (BatchNorm of a
backbone with frozen statistics) go to `set_to_zero` and keep no optimiser state.

The classifier (paper, Sec. "Implementation details", and the release) uses four groups:
backbone weights at the base rate, backbone biases x2, new layers x10, their biases x20, all
multiplied by 0.1 every 5 epochs. The segmentation stage reuses `build_sgd` with its own labels
(backbone x1, head x10) and `poly_schedule`, and can hold the backbone still for the first steps
(`hold_steps`: a head warm-up).
"""

from typing import Callable, Mapping, Optional

import flax
import jax.numpy as jnp
import optax

FROZEN = 'frozen'
Schedule = Callable[[int], float]
PathLabel = Callable[[tuple], str]


def make_labels(params, path_label: PathLabel):
  """The label tree of `params`: `path_label(path)` for each leaf, path a tuple of names."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  return flax.traverse_util.unflatten_dict({k: path_label(k) for k in flat})


def hold(num_steps: int) -> optax.GradientTransformation:
  """Zeroes the updates of the first `num_steps` steps. Placed first in a group's chain, the
  group neither moves nor accumulates momentum or weight decay while held."""
  return optax.scale_by_schedule(lambda count: (count >= num_steps).astype(jnp.float32))


def held_schedule(schedule: Schedule, num_steps: int) -> Schedule:
  """`schedule` reported as 0 for the first `num_steps` steps (the rate a held group runs at)."""
  return lambda step: jnp.where(step < num_steps, 0.0, schedule(step))


def build_sgd(params, path_label: PathLabel, lr_by_label: Mapping[str, Optional[Schedule]], *,
              momentum: float, nesterov: bool, weight_decay: float,
              hold_steps: Optional[Mapping[str, int]] = None) -> optax.GradientTransformation:
  """SGD with momentum and coupled weight decay (PyTorch semantics), one schedule per group.

  Args:
    params: the parameter tree (only its structure and paths are used).
    path_label: maps a parameter path (tuple of names) to a key of `lr_by_label`.
    lr_by_label: group -> learning-rate schedule (step -> lr), or None for a frozen group.
    momentum, nesterov, weight_decay: as `torch.optim.SGD`.
    hold_steps: group -> number of first steps in which the group is not updated at all (no
      move, no momentum, no decay); its schedule keeps counting the global step, so it starts
      at the rate the schedule has reached.
  """
  hold_steps = dict(hold_steps or {})
  labels = make_labels(params, path_label)
  used = set(flax.traverse_util.flatten_dict(labels).values())
  missing = used - set(lr_by_label)
  if missing:
    raise ValueError(f'no learning rate for parameter groups {sorted(missing)}')
  transforms = {}
  for label in used:
    schedule = lr_by_label[label]
    if schedule is None:
      transforms[label] = optax.set_to_zero()
    else:
      transforms[label] = optax.chain(
          hold(hold_steps[label]) if hold_steps.get(label) else optax.identity(),
          optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
          optax.trace(decay=momentum, nesterov=nesterov),
          optax.scale_by_learning_rate(schedule))
  return optax.multi_transform(transforms, labels)


def step_decay_schedule(base_lr: float, steps_per_epoch: int, decay_every_epochs: int,
                        decay_factor: float, num_epochs: int) -> Schedule:
  """`base_lr * decay_factor ** (epoch // decay_every_epochs)`, as a function of the step.

  optax counts updates from 0 and scales from a boundary on, so the first step of epoch 5
  (0-based) already runs at x0.1, as PyTorch's per-epoch `StepLR` does.
  """
  boundaries = {e * steps_per_epoch: decay_factor
                for e in range(decay_every_epochs, num_epochs, decay_every_epochs)}
  return optax.piecewise_constant_schedule(base_lr, boundaries)


def poly_schedule(base_lr: float, num_steps: int, power: float = 0.9) -> Schedule:
  """DeepLab's `base_lr * (1 - step / num_steps) ** power`."""
  return optax.polynomial_schedule(init_value=base_lr, end_value=0.0, power=power,
                                   transition_steps=num_steps)


def batchnorm_modules(batch_stats) -> set:
  """Paths of the modules that hold BatchNorm statistics (their params are the BN affine)."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(batch_stats or {}))
  return {k[:-1] for k in flat}


def classifier_label_fn(batch_stats, freeze_bn: bool, graph_group: bool = False) -> PathLabel:
  """Groups of the group-wise classifier: the top-level 'backbone' is pretrained, all else new.

  Biases (leaves named 'bias') form their own groups; the affine parameters of BatchNorm
  layers go to FROZEN when the backbone's statistics are frozen (`model.freeze_bn`). With
  `graph_group`, the top-level 'graph' gets groups of its own ('graph_weight', 'graph_bias');
  without it, they are new layers like the rest.
  """
  bn = batchnorm_modules(batch_stats) if freeze_bn else set()

  def label(path):
    if path[:-1] in bn:
      return FROZEN
    kind = 'bias' if path[-1] == 'bias' else 'weight'
    if path[0] == 'backbone':
      return f'backbone_{kind}'
    return f'{"graph" if graph_group and path[0] == "graph" else "new"}_{kind}'
  return label


def classifier_optimizer(train_config, params, batch_stats, freeze_bn: bool,
                         steps_per_epoch: int):
  """The paper's optimiser from `config.train`; returns (tx, {group: schedule}) for logging.

  The graph's parameters get groups of their own only when `train.graph_lr_mult` or
  `train.graph_bias_lr_mult` is set (their biases: `graph_bias_lr_mult`, else twice
  `graph_lr_mult`, else the new layers' bias rate), so that the optimiser state of a run that
  sets neither keeps the four groups (checkpoints stay compatible).
  """
  t = train_config
  def sched(mult):
    return step_decay_schedule(t.base_lr * mult, steps_per_epoch, t.decay_every_epochs,
                               t.decay_factor, t.num_epochs)
  lr_by_label = {'backbone_weight': sched(1.0), 'backbone_bias': sched(t.backbone_bias_lr_mult),
                 'new_weight': sched(t.new_lr_mult), 'new_bias': sched(t.new_bias_lr_mult),
                 FROZEN: None}
  weight, bias = t.get('graph_lr_mult'), t.get('graph_bias_lr_mult')
  graph_group = (weight is not None or bias is not None) and 'graph' in params
  if graph_group:
    if bias is None:
      bias = t.new_bias_lr_mult if weight is None else 2 * weight
    lr_by_label.update(graph_weight=sched(t.new_lr_mult if weight is None else weight),
                       graph_bias=sched(bias))
  tx = build_sgd(params, classifier_label_fn(batch_stats, freeze_bn, graph_group), lr_by_label,
                 momentum=t.momentum, nesterov=t.nesterov, weight_decay=t.weight_decay)
  return tx, {k: v for k, v in lr_by_label.items() if v is not None}
