"""The paper's Table 3 ablations as config overrides (run with gwsss_jax.sweep).

Run on the built-in dataset (sequentially, one workdir per variant):
  python -m gwsss_jax.sweep --config=configs/demo.py --sweep=configs/sweeps/table3.py \
    --workdir=runs/table3

On a cluster, `--print_commands` prints one `gwsss_jax.main` command per variant for
`launch/sweep_slurm.sh` (one SLURM array task each). Variants that only change how CAMs are read out
(`cam_*`) reuse the classifier trained by `reuse` instead of training again.

Table 3's readout rows (intermediate output, graph output, self-ensembling) are on the default
row's CAM pipeline: the default run accumulates all three readouts in its OAA store
(`cams.oaa_all_readouts`), and each `cam_*` row copies that classifier and store and exports its
readout (`cams.source`). `cam_ensemble` has the default row's config, so it reproduces the default
row exactly (tests/test_sweep.py checks the configs and the copy).
"""


BASE = {'model.num_nodes': 4, 'model.graph_steps': 3}  # the paper's K and T
READOUTS = {'cams.oaa_all_readouts': True}  # the default row stores every readout's OAA maps


def get_sweep():
  """(name, overrides, reuse) triples: `reuse` names a variant whose trained classifier the
  variant shares (None = train its own)."""
  # The plain single-image baseline: groups of one image and no graph (T = 0), so both readouts
  # are class convolutions on h^0 (the intermediate one and phi_r).
  deltas = [('single_image_K1', {'model.num_nodes': 1, 'model.graph_steps': 0}, None),
            ('default_K4_T3', dict(READOUTS), None)]
  deltas += [(f'K{k}', {'model.num_nodes': k}, None) for k in (3, 5, 6)]
  deltas += [(f'T{t}', {'model.graph_steps': t}, None) for t in (2, 4, 5)]
  deltas += [(f'drop_r{r}_d{d}', {'model.importance_prob': r, 'model.drop_threshold': d}, None)
             for r, d in ((0.6, 0.7), (0.8, 0.5), (0.8, 0.9))]
  deltas.append(('no_graph_dropout', {'model.graph_dropout': False}, None))
  deltas += [(f'cam_{source}', {**READOUTS, 'cams.source': source}, 'default_K4_T3')
             for source in ('intermediate', 'graph', 'ensemble')]
  return [(name, {**BASE, **delta}, reuse) for name, delta, reuse in deltas]
