"""Why the group-wise model trails the single-image baseline on MSRC (docs/groupwise.md):
variants of configs/sweeps/msrc_groupwise.py's group model that each change one candidate cause,
on the one-epoch schedule where the gap was largest (configs/msrc.py itself now trains four
epochs).

Run (needs the MSRC-v2 data):
  python -m gwsss_jax.sweep --config=configs/msrc.py --sweep=configs/sweeps/msrc_investigate.py \
    --workdir=runs/msrc_investigate --seeds=0 --stages=train_cls,export_cams,pseudo_labels,eval_cams \
    --set=data.root=/data/msrc_v2,model.pretrained=.cache/weights/vgg16_imagenet_onnx
"""

GROUP = {'model.num_nodes': 3, 'model.graph_steps': 3, 'train.num_epochs': 1}


def get_sweep():
  """(name, overrides, reuse) triples (see gwsss_jax.sweep)."""
  deltas = [
      ('K3_T0', {'model.graph_steps': 0}),               # groups, no message passing
      # the same, its groups' members shuffled among the groups: each image as often as in the
      # sampler's groups, but batches no longer gathered by shared class
      ('K3_T0_shuffled', {'model.graph_steps': 0, 'train.shuffle_members': True}),
      # the sampler's candidates, the least used first: every image about K times an epoch
      ('K3_T0_balanced', {'model.graph_steps': 0, 'train.group_rule': 'balanced'}),
      ('K3_T3_balanced', {'train.group_rule': 'balanced'}),
      ('K3_T3_no_graph_dropout', {'model.graph_dropout': False}),
      ('K3_T3_lambda1', {'model.loss_lambda': 1.0}),     # intermediate readout's share up
      ('K3_T3_new_mult1', {'train.new_lr_mult': 1.0,     # new layers at the backbone's lr
                           'train.new_bias_lr_mult': 2.0}),
      ('K3_T3_2epochs', {'train.num_epochs': 2}),
      # two parts of the paper variant's graph that the authors' network lacks, one at a time
      ('K3_T3_no_self_edge', {'model.self_edge': False}),
      ('K3_T3_all_pairs', {'model.edge_mask': 'all'}),
      ('K3_T3_gated_fusion', {'model.message_fusion': 'gated_conv'}),
      ('K3_T3_release_init', {'model.extra_conv_init': 'release'}),
      ('K3_T3_drop_average', {'model.drop_output': 'average'}),
      ('K1_T0_2epochs', {'model.num_nodes': 1, 'model.graph_steps': 0, 'train.batch_size': 6,
                         'train.repeats_per_epoch': 3, 'train.num_epochs': 2}),
  ]
  return [(name, {**GROUP, **delta}, None) for name, delta in deltas]
