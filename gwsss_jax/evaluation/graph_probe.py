"""How much a trained classifier's graph changes its class maps.

For each positive class of each image of the first `--groups` training groups (the sampler's
groups of epoch 0, the whole image resized to the input size, inference mode), the graph
readout's map is fitted by an affine function of the intermediate readout's map over its pixels:

  cam_graph[..., c] ~ a * cam_mid[..., c] + b      R^2 = 1 - var(residual) / var(cam_graph)

R^2 near 1 for nearly every map means that the message passing only rescales and shifts the
map it started from: the graph readout then carries no information that the intermediate
readout lacks (docs/groupwise.md, "Its graph barely changes the maps"). For a model without message
passing (T = 0) the two readouts are two class convolutions on the same features.

`--reset` asks whether training made it so: `graph` puts the graph's parameters back to the
initialisation that train_cls gives them (the run's seed, this version's initialisers; the
backbone and the class convolution stay trained), `all` probes the classifier as train_cls
starts it (`model.pretrained` in the backbone, every new layer at its initialisation). The
summary also gives how far training moved each of the graph's kernels, |W - W0| / |W0|.

  python -m gwsss_jax.evaluation.graph_probe --workdir=runs/msrc [--groups=40] [--reset=graph]

It reads the run's `config.json` and its trained classifier (train_cls); it needs the data
that the run was trained on (and, for `--reset=all`, its `model.pretrained`). Prints a summary
and writes `<workdir>/graph_probe.json` (`graph_probe_reset_<graph|all>.json` with `--reset`).
"""

import json
import os

import jax
import ml_collections
import numpy as np
from absl import flags
from flax import traverse_util

from gwsss_jax import config as config_lib
from gwsss_jax.cams import export
from gwsss_jax.common import cli
from gwsss_jax.common import io as gio
from gwsss_jax.common.errors import UserError
from gwsss_jax.data import datasets
from gwsss_jax.data import sampler
from gwsss_jax.train import artifact
from gwsss_jax.train import steps

RESETS = ('none', 'graph', 'all')


def affine_fit(x, y):
  """Least squares y ~ a x + b along the last axis: (a, b, r2), each of shape x.shape[:-1].

  A constant x gives a = 0 (b is the mean of y); a constant y gives R^2 = 1 (nothing left to
  explain).
  """
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  xm, ym = x.mean(-1), y.mean(-1)
  dx, dy = x - xm[..., None], y - ym[..., None]
  sxx, sxy, syy = (dx * dx).sum(-1), (dx * dy).sum(-1), (dy * dy).sum(-1)
  a = np.where(sxx > 0, sxy / np.where(sxx > 0, sxx, 1.0), 0.0)
  residual = np.maximum(syy - a * sxy, 0.0)
  r2 = np.where(syy > 0, 1.0 - residual / np.where(syy > 0, syy, 1.0), 1.0)
  return a, ym - a * xm, r2


def read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise UserError(f'{path} not found: --workdir must be a run of gwsss_jax.main')
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError) as e:
    raise UserError(f'unreadable {path}: {e}') from None


def initial_variables(config, variables, init, reset: str) -> dict:
  """`variables` with the parameters that `reset` names at train_cls's initialisation `init`."""
  if reset == 'none':
    return variables
  if reset == 'all':
    return steps.with_pretrained(config, init)
  if 'graph' not in variables['params']:
    raise UserError(f'--reset=graph: the classifier of {config.model.variant!r} with '
                    f'{config.model.graph_steps} graph steps has no graph parameters')
  return dict(variables, params=dict(variables['params'], graph=init['params']['graph']))


def weight_change(params, initial) -> dict:
  """|W - W0| / |W0| of each kernel of the graph (e.g. 'step/extra_proja'): how far training
  moved it from its start."""
  if 'graph' not in params:
    return {}
  start = traverse_util.flatten_dict(initial['graph'], sep='/')
  change = {}
  for path, w in traverse_util.flatten_dict(params['graph'], sep='/').items():
    if path.endswith('/kernel'):
      w0 = np.asarray(start[path], np.float64)
      change[path[:-len('/kernel')]] = float(np.linalg.norm(np.asarray(w, np.float64) - w0)
                                             / np.linalg.norm(w0))
  return change


def probe(workdir: str, num_groups: int = 40, reset: str = 'none') -> dict:
  """The fits of the first `num_groups` training groups; returns the summary (see module)."""
  if reset not in RESETS:
    raise UserError(f'--reset={reset!r}: one of {", ".join(RESETS)}')
  config = read_config(workdir)
  model, variables, record = artifact.load(artifact.classifier_dir(workdir), artifact.CLASSIFIER)
  dataset = datasets.load_split(config, config.data.train_split)
  labels = dataset.label_matrix()
  # The network from its record (today's key names even for an older run); the data, seed and
  # group rule from the run's config.
  arch = record['model']
  k = arch['num_nodes']
  config.model.update(arch)  # the initialisation's shapes: the trained network's
  init = steps.init_classifier(model, config, jax.random.key(config.seed))
  variables = initial_variables(config, variables, init, reset)
  change = weight_change(variables['params'], init['params'])
  groups, adjacency = sampler.make_groups(labels, k, config.seed, 0,
                                          config.train.get('group_rule', 'greedy'))
  side = config_lib.input_size(config)
  apply = jax.jit(lambda v, x, adj: model.apply(v, x, adj, train=False)[1])
  a, b, r2 = [], [], []
  for g in range(min(num_groups, len(groups))):
    members = groups[g]
    x = export.square_inputs([export.load_rgb(dataset.examples[i].image_path) for i in members],
                             side, record['normalization'])[None]
    out = apply(variables, x, adjacency[g:g + 1].astype(np.float32))
    mid, graph = np.asarray(out['cam_mid'][0]), np.asarray(out['cam_graph'][0])
    for n, i in enumerate(members):
      classes = np.flatnonzero(labels[i])
      if not len(classes):
        continue
      m = np.moveaxis(mid[n][..., classes], -1, 0).reshape(len(classes), -1)
      y = np.moveaxis(graph[n][..., classes], -1, 0).reshape(len(classes), -1)
      fa, fb, fr = affine_fit(m, y)
      a.append(fa)
      b.append(fb / np.maximum(np.abs(y).max(-1), 1e-12))
      r2.append(fr)
  if not a:
    raise UserError(f'{workdir}: no training image with a class in the first {num_groups} groups')
  a, b, r2 = (np.concatenate(v) for v in (a, b, r2))
  return {
      'maps': int(len(r2)), 'groups': int(min(num_groups, len(groups))),
      'graph_steps': int(arch['graph_steps']), 'variant': str(arch['variant']), 'reset': reset,
      'a_median': float(np.median(a)), 'b_over_max_median': float(np.median(b)),
      'r2_median': float(np.median(r2)), 'r2_p10': float(np.percentile(r2, 10)),
      'r2_min': float(np.min(r2)), 'r2_below_0.99': float(np.mean(r2 < 0.99)),
      'graph_weight_change': change,
  }


def main(argv):
  del argv
  reset = flags.FLAGS.reset
  summary = probe(flags.FLAGS.workdir, flags.FLAGS.groups, reset)
  name = 'graph_probe.json' if reset == 'none' else f'graph_probe_reset_{reset}.json'
  gio.atomic_write_text(os.path.join(flags.FLAGS.workdir, name),
                        json.dumps(summary, indent=1) + '\n')
  which = '' if reset == 'none' else f', {reset} reset to its initialisation'
  # One line, so that benchmarks/msrc_device.sh can keep the last line of each run's output.
  moved = ', '.join(f'{k} {v:.3f}' for k, v in summary['graph_weight_change'].items())
  print(f"graph_probe: {summary['maps']} maps of {summary['groups']} groups "
        f"({summary['variant']}, T = {summary['graph_steps']}{which}): "
        f"cam_graph = a cam_mid + b with a {summary['a_median']:.4f} (median), "
        f"R^2 median {summary['r2_median']:.5f}, "
        f"10th percentile {summary['r2_p10']:.5f}, min {summary['r2_min']:.5f}; "
        f"{100 * summary['r2_below_0.99']:.1f}% of maps below 0.99"
        + (f'; graph kernels, |W - W0| / |W0| from their initialisation: {moved}' if moved else ''))


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'A run of gwsss_jax.main with a trained classifier.')
  flags.DEFINE_integer('groups', 40, 'How many training groups to run.')
  flags.DEFINE_enum('reset', 'none', RESETS, 'Parameters put back to their initialisation: '
                    'none, the graph\'s, or all but the pretrained backbone.')
  flags.mark_flag_as_required('workdir')
  cli.run(main)
