"""The paper's Table 3 ablations as config overrides (run with gwsss_jax.sweep).

Run on the built-in dataset (sequentially, one workdir per variant):
  python -m gwsss_jax.sweep --config=configs/demo.py --sweep=configs/sweeps/table3.py \
    --workdir=runs/table3

On a cluster, `--print_commands` prints one `gwsss_jax.main` command per variant for
`launch/sweep_slurm.sh` (one SLURM array task each). Variants that only change how CAMs are read out
(`cam_*`) reuse the classifier trained by `reuse` instead of training again.
"""


BASE = {'model.num_nodes': 4, 'model.num_steps': 3}  # the paper's K and T


def get_sweep():
  """(name, overrides, reuse) triples: `reuse` names a variant whose trained classifier the
  variant shares (None = train its own)."""
  # The plain single-image baseline: groups of one image and no graph (T = 0), so both readouts
  # are class convolutions on h^0 (the intermediate one and phi_r).
  deltas = [('single_image_K1', {'model.num_nodes': 1, 'model.num_steps': 0}, None),
            ('default_K4_T3', {}, None)]
  deltas += [(f'K{k}', {'model.num_nodes': k}, None) for k in (3, 5, 6)]
  deltas += [(f'T{t}', {'model.num_steps': t}, None) for t in (2, 4, 5)]
  deltas += [(f'drop_r{r}_d{d}', {'model.drop_rate': r, 'model.drop_threshold': d}, None)
             for r, d in ((0.6, 0.7), (0.8, 0.5), (0.8, 0.9))]
  deltas.append(('no_graph_dropout', {'model.graph_dropout': False}, None))
  deltas += [(f'cam_{source}', {'cams.method': 'group_inference', 'cams.source': source},
              'default_K4_T3') for source in ('intermediate', 'graph', 'ensemble')]
  return [(name, {**BASE, **delta}, reuse) for name, delta, reuse in deltas]
