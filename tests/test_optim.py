"""The paper's optimiser: lr groups and step schedule, and SGD steps against torch.optim.SGD."""

import numpy as np
import optax
import pytest
import torch

from gwsss_jax import config as config_lib
from gwsss_jax.train import optim


def _params():
  rng = np.random.default_rng(0)
  return {
      'backbone': {'conv1': {'kernel': rng.normal(size=(3, 3, 2, 4)).astype(np.float32),
                             'bias': rng.normal(size=(4,)).astype(np.float32)},
                   'bn1': {'scale': np.ones(4, np.float32), 'bias': np.zeros(4, np.float32)}},
      'graph': {'gru': {'kernel': rng.normal(size=(4, 4)).astype(np.float32),
                        'bias': rng.normal(size=(4,)).astype(np.float32)}},
  }


BATCH_STATS = {'backbone': {'bn1': {'mean': np.zeros(4), 'var': np.ones(4)}}}


def test_classifier_groups():
  label = optim.classifier_label_fn(BATCH_STATS, freeze_bn=True)
  labels = optim.make_labels(_params(), label)
  assert labels['backbone']['conv1'] == {'kernel': 'backbone_weight', 'bias': 'backbone_bias'}
  assert labels['backbone']['bn1'] == {'scale': optim.FROZEN, 'bias': optim.FROZEN}
  assert labels['graph']['gru'] == {'kernel': 'new_weight', 'bias': 'new_bias'}
  unfrozen = optim.make_labels(_params(), optim.classifier_label_fn(BATCH_STATS, False))
  assert unfrozen['backbone']['bn1']['scale'] == 'backbone_weight'


@pytest.mark.parametrize('steps_per_epoch', [1, 7, 1323])
def test_paper_learning_rates(steps_per_epoch):
  # Paper / release: 1e-3 backbone, 2e-3 backbone biases, 1e-2 new layers, 2e-2 new biases,
  # x0.1 at the start of epochs 5 and 10 of 15 (0-based epochs).
  config = config_lib.base_config()
  _, lrs = optim.classifier_optimizer(config.train, _params(), BATCH_STATS, True,
                                      steps_per_epoch)
  base = {'backbone_weight': 1e-3, 'backbone_bias': 2e-3, 'new_weight': 1e-2, 'new_bias': 2e-2}
  for epoch, factor in [(0, 1.0), (4, 1.0), (5, 0.1), (9, 0.1), (10, 0.01), (14, 0.01)]:
    for step in (epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch - 1):
      for group, lr in base.items():
        np.testing.assert_allclose(float(lrs[group](step)), lr * factor, rtol=1e-6,
                                   err_msg=f'{group} at step {step} (epoch {epoch})')


def test_poly_schedule():
  sched = optim.poly_schedule(2.5e-4, 20000, 0.9)
  for step in (0, 1, 5000, 19999):
    np.testing.assert_allclose(float(sched(step)), 2.5e-4 * (1 - step / 20000) ** 0.9,
                               rtol=5e-4)  # float32 count near the end


def test_sgd_matches_torch_per_group():
  params = _params()
  rng = np.random.default_rng(1)
  grads = [{k: {m: {n: rng.normal(size=v.shape).astype(np.float32) for n, v in mod.items()}
                for m, mod in sub.items()} for k, sub in params.items()} for _ in range(3)]
  lr = {'backbone_weight': 1e-3, 'backbone_bias': 2e-3, 'new_weight': 1e-2, 'new_bias': 2e-2}
  tx = optim.build_sgd(params, optim.classifier_label_fn(BATCH_STATS, True),
                       {**{k: optax.constant_schedule(v) for k, v in lr.items()},
                        optim.FROZEN: None},
                       momentum=0.9, nesterov=True, weight_decay=5e-4)
  state = tx.init(params)
  p = params
  for g in grads:
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)

  # Independent: torch.optim.SGD with one param group per lr; the frozen BN is not optimised.
  label = optim.classifier_label_fn(BATCH_STATS, True)
  leaves = {}
  for k, sub in params.items():
    for m, mod in sub.items():
      for n, v in mod.items():
        leaves[(k, m, n)] = torch.nn.Parameter(torch.tensor(v))
  groups = {}
  for path, t in leaves.items():
    if label(path) != optim.FROZEN:
      groups.setdefault(label(path), []).append(t)
  opt = torch.optim.SGD([{'params': ts, 'lr': lr[name]} for name, ts in groups.items()],
                        lr=1.0, momentum=0.9, nesterov=True, weight_decay=5e-4)
  for g in grads:
    for (k, m, n), t in leaves.items():
      t.grad = torch.tensor(g[k][m][n])
    opt.step()
  for (k, m, n), t in leaves.items():
    np.testing.assert_allclose(np.asarray(p[k][m][n]), t.detach().numpy(), rtol=1e-6,
                               atol=1e-7, err_msg='/'.join((k, m, n)))


def test_graph_rate_of_its_own():
  """train.graph_lr_mult: the graph's own groups only when a graph key is set; one SGD step
  moves each group by its own rate (first Nesterov step, by hand: p -= lr (1 + m) (g + wd p))."""
  config = config_lib.lock(config_lib.base_config())
  t = config.train
  params = _params()
  default_tx, default_lrs = optim.classifier_optimizer(t, params, BATCH_STATS, True, 10)
  assert set(default_lrs) == {'backbone_weight', 'backbone_bias', 'new_weight', 'new_bias'}
  t.new_bias_lr_mult = 5.0  # the new layers' keys alone: the graph follows them
  _, lrs = optim.classifier_optimizer(t, params, BATCH_STATS, True, 10)
  assert set(lrs) == set(default_lrs) and float(lrs['new_bias'](0)) == pytest.approx(5e-3)
  t.graph_bias_lr_mult = 7.0  # the graph's bias key alone: its weights at the new layers' rate
  _, lrs = optim.classifier_optimizer(t, params, BATCH_STATS, True, 10)
  assert float(lrs['graph_weight'](0)) == pytest.approx(1e-2)
  assert float(lrs['graph_bias'](0)) == pytest.approx(7e-3)
  t.graph_bias_lr_mult = None
  t.graph_lr_mult = 100.0  # biases at twice it
  tx, lrs = optim.classifier_optimizer(t, params, BATCH_STATS, True, 10)
  assert float(lrs['graph_weight'](0)) == pytest.approx(0.1)
  assert float(lrs['graph_bias'](0)) == pytest.approx(0.2)
  assert float(lrs['new_weight'](0)) == pytest.approx(1e-2)
  labels = optim.make_labels(params, optim.classifier_label_fn(BATCH_STATS, True, True))
  assert labels['graph']['gru'] == {'kernel': 'graph_weight', 'bias': 'graph_bias'}
  assert labels['backbone']['conv1']['kernel'] == 'backbone_weight'
  # The default rates keep the optimiser state of four groups (checkpoints stay compatible).
  assert set(default_tx.init(params).inner_states) == {'backbone_weight', 'backbone_bias',
                                                       'new_weight', 'new_bias', optim.FROZEN}
  rng = np.random.default_rng(2)
  grads = {k: {m: {n: rng.normal(size=v.shape).astype(np.float32) for n, v in mod.items()}
               for m, mod in sub.items()} for k, sub in params.items()}
  updates, _ = tx.update(grads, tx.init(params), params)
  for (m, n), lr in [(('gru', 'kernel'), 0.1), (('gru', 'bias'), 0.2)]:
    p, g = params['graph'][m][n], grads['graph'][m][n]
    np.testing.assert_allclose(np.asarray(updates['graph'][m][n]),
                               -lr * 1.9 * (g + 5e-4 * p), rtol=1e-5, err_msg=n)
  p, g = params['backbone']['conv1']['kernel'], grads['backbone']['conv1']['kernel']
  np.testing.assert_allclose(np.asarray(updates['backbone']['conv1']['kernel']),
                             -1e-3 * 1.9 * (g + 5e-4 * p), rtol=1e-5)
