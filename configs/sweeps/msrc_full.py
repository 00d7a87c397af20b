"""Group-wise mining against the single-image baseline at the paper's sizes
(`configs/msrc.py:full`, docs/groupwise.md, "At the paper's sizes"), for a GPU.

Run on a GPU machine without TensorFlow (every seed of the default variants at once, through the
CAMs and pseudo labels): `bash benchmarks/msrc_device.sh`. Or, where TensorFlow is installed, one
variant and seed after another:
  python -m gwsss_jax.sweep --config=configs/msrc.py:full --sweep=configs/sweeps/msrc_full.py \
    --workdir=runs/msrc_full --seeds=0,1,2 \
    --set=data.root=/data/msrc_v2,model.pretrained=.cache/weights/vgg16_imagenet_onnx,seg.pretrained=.cache/weights/vgg16_imagenet_onnx

The group model takes 1 group of K = 4 images a step; the baseline 4 single images, every image
4 times an epoch (`train.repeats_per_epoch`), so both run the same steps and see each image
equally often. The full schedule keeps OAA's own rule (the anchor's map, from the second epoch),
one update per image and epoch for the group model; `cams.oaa_rounds=1` gives the baseline the
same count (docs/groupwise.md: the update count moves the pseudo labels more than anything else
measured on the CPU schedule).

`release_K3_T3` is the authors' network (`model.variant='release'`, groups of 3, the release's
graph dropout; `model.extra_conv_init='he'` only undoes the schedule's setting for the paper
variant, which the release variant refuses: its own layers start as the release's anyway): on
the CPU schedule it was level with the single-image baseline where the paper variant was behind
(docs/groupwise.md, "The authors' network"). One group of 3 a step: it sees each image about 3
times an epoch where the baseline sees it 4 times; both take one OAA update per image and epoch.
`single_image_K1_b3` is its matched baseline: 3 single images a step, each image 3 times an
epoch, the same steps and views as `release_K3_T3`. The release halves its loss (the mean of
its two readouts' terms) where the other variants sum them, so at one `train.base_lr` its steps
are half as long; `release_K3_T3_lr2x` (1e-3) takes the baseline's step size (docs/groupwise.md, the
"Step size" bullet).

`group_K4_T3_small_graph` is the group model with the CPU schedule's graph (64-channel nodes,
1x1 ConvGRU) at the paper's input sizes: on the CPU schedule the paper-size graph trained
worse than the small one (docs/groupwise.md), and this variant tells at 224 pixels whether the
graph's size or the input size decides. msrc_device.sh runs single_image_K1, group_K4_T3 and
release_K3_T3 unless ONLY names others.
"""


def get_sweep():
  """(name, overrides, reuse) triples (see gwsss_jax.sweep)."""
  return [
      ('single_image_K1', {'model.num_nodes': 1, 'model.graph_steps': 0,
                           'train.batch_size': 4, 'train.repeats_per_epoch': 4,
                           'cams.oaa_rounds': 1}, None),
      ('single_image_K1_b3', {'model.num_nodes': 1, 'model.graph_steps': 0,
                              'train.batch_size': 3, 'train.repeats_per_epoch': 3,
                              'cams.oaa_rounds': 1}, None),
      ('group_K4_T3', {'model.num_nodes': 4, 'model.graph_steps': 3}, None),
      ('release_K3_T3', {'model.variant': 'release', 'model.num_nodes': 3,
                         'model.graph_steps': 3, 'model.importance_prob': 0.2,
                         'model.extra_conv_init': 'he'}, None),
      ('release_K3_T3_lr2x', {'model.variant': 'release', 'model.num_nodes': 3,
                              'model.graph_steps': 3, 'model.importance_prob': 0.2,
                              'model.extra_conv_init': 'he', 'train.base_lr': 1e-3}, None),
      ('group_K4_T3_small_graph', {'model.num_nodes': 4, 'model.graph_steps': 3,
                                   'model.node_dim': 64, 'model.gru_kernel': 1}, None),
  ]
