"""Group-wise mining against the single-image baseline on MSRC (docs/groupwise.md, "The
measurement").

Run (needs the MSRC-v2 data; 3 seeds of each variant, one workdir per variant and seed):
  python -m gwsss_jax.sweep --config=configs/msrc.py --sweep=configs/sweeps/msrc_groupwise.py \
    --workdir=runs/msrc_groupwise --seeds=0,1,2 \
    --set=data.root=/data/msrc_v2,model.pretrained=.cache/weights/vgg16_imagenet_onnx,seg.pretrained=.cache/weights/vgg16_imagenet_onnx

Both variants see the same images: a step is 2 groups of K = 3 images against 6 single images,
and the baseline presents every image 3 times an epoch (`train.repeats_per_epoch`), so both run
the same steps per epoch, see every image about 3 times an epoch and accumulate OAA over the
same epochs.
"""


def get_sweep():
  """(name, overrides, reuse) triples (see gwsss_jax.sweep)."""
  return [
      ('single_image_K1', {'model.num_nodes': 1, 'model.graph_steps': 0,
                           'train.batch_size': 6, 'train.repeats_per_epoch': 3}, None),
      ('group_K3_T3', {'model.num_nodes': 3, 'model.graph_steps': 3}, None),
  ]
