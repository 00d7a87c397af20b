"""MSRC-v2 photographs, the 12 PASCAL VOC classes it has (see docs/msrc.md), ImageNet VGG16.

No saliency maps: the background of CAMs and pseudo labels is the CAM background cue
(`cams.bg_threshold`; eval_cams also reports the best threshold of `cams.bg_sweep`).

Two schedules:
- `configs/msrc.py`: a 2-core CPU run. The networks are full-width VGG16 (classifier trunk and
  DeepLab-LargeFOV) on small crops (MSRC photographs are 320x213, resized here to a 72-pixel
  shorter side, 64-pixel crops) with a small graph (64-channel nodes, 1x1 ConvGRU), K = 3, T = 3,
  four epochs (536 steps of 2 groups); DeepLab-LargeFOV 120 steps of 4 crops of 96 pixels
  (the first 40 with the trunk held), evaluated on the 196 val images at full resolution.
- `configs/msrc.py:full`: the paper's sizes for a GPU (224 crops of a 256 shorter side, K = 4,
  T = 3, 512-channel nodes, 3x3 ConvGRU, 15 epochs, `train.base_lr=5e-4`, the extra
  convolutions initialised as the release's), DeepLab-LargeFOV on 321 crops.

Run (needs the MSRC-v2 data, docs/msrc.md says where to get it; `make demo` makes the weights):
  python -m gwsss_jax.main --config=configs/msrc.py --workdir=runs/msrc \
    --config.data.root=/data/msrc_v2 \
    --config.model.pretrained=.cache/weights/vgg16_imagenet_onnx \
    --config.seg.pretrained=.cache/weights/vgg16_imagenet_onnx

Expected (docs/groupwise.md, "The measurement": 3 seeds on the shared 2-core CPU, where the
classifier took 10-12 minutes alongside other jobs and the CAM stages about a minute): held-out mAP
0.75 +- 0.04, CAM mIoU 0.414 +- 0.002 (best background threshold 0.55-0.6), pseudo-label mIoU
0.346 +- 0.007 on train (at cams.bg_threshold=0.2). The single-image baseline of
configs/sweeps/msrc_groupwise.py, given the same images, is still ahead (0.77, 0.448, 0.363);
with --config.model.variant=release --config.model.importance_prob=0.2 (the authors' network)
the group model is level with it (0.80, 0.448, 0.366). DeepLab's val mIoU is in docs/groupwise.md.
The `:full` schedule needs a GPU and has not run its 15 epochs yet. Eight of them
(--config.train.num_epochs=8 --config.train.group_rule=balanced, 3 seeds on an H200,
docs/groupwise.md, "At the paper's sizes"): held-out mAP 0.88, CAM mIoU 0.530 +- 0.010 (best threshold 0.15-0.2),
pseudo-label mIoU 0.530 +- 0.010; the authors' network 0.88, 0.548, 0.547; the single-image
baseline with its steps and views 0.87, 0.554, 0.554. `bash benchmarks/msrc_device.sh` runs
these against the matched baselines (configs/sweeps/msrc_full.py) on a GPU machine without
TensorFlow.
"""

from gwsss_jax import config as config_lib


def get_config(schedule: str = 'cpu'):
  if schedule not in ('cpu', 'full'):
    raise ValueError(f"configs/msrc.py:{schedule}: choose 'cpu' (the default) or 'full'")
  config = config_lib.base_config()
  config.data.name = 'msrc'
  config.data.msrc_labels = 'voc'
  config.data.num_classes = 12
  config.data.train_split = 'train'
  config.data.val_split = 'val'
  config.data.saliency_dir = ''
  config.cams.scales = (1.0,)
  config.cams.flip = False
  config.cams.num_vis = 8
  config.seg.model = 'deeplab_largefov_vgg16'
  # LargeFOV's fc6/fc7 start random (the converted VGG16 has no fc weights): the trunk waits.
  config.seg.head_warmup_steps = 50
  if schedule == 'full':
    config.model.num_nodes = 4
    config.model.graph_steps = 3
    config.train.num_epochs = 15
    # At 1e-3 the paper variant diverged in one GPU seed of three (docs/groupwise.md): the CPU
    # schedule's rate, for every variant of configs/sweeps/msrc_full.py.
    config.train.base_lr = 5e-4
    # He-initialised, the extra convolutions kept the paper variant at the label prior at these
    # sizes (at 1e-3 and 5e-4, and on the GPU); started as the release's, it trains
    # (docs/groupwise.md).
    # The release variant refuses the key: its sweep entry sets 'he' back.
    config.model.extra_conv_init = 'release'
    config.seg.batch_size = 10
    config.seg.crop_size = 321
    config.seg.num_steps = 3000
    config.seg.head_warmup_steps = 200
    return config

  config.data.crop_size = 64
  config.data.resize = 72
  config.model.node_dim = 64
  config.model.gru_kernel = 1
  config.model.num_nodes = 3
  config.model.graph_steps = 3
  config.train.batch_size = 2
  # One epoch left the graph model's maps of many classes empty; it keeps learning where the
  # single-image baseline has levelled off (docs/groupwise.md), so the CPU budget goes to epochs.
  config.train.num_epochs = 4
  config.train.base_lr = 5e-4    # as the demo: the He-initialised extra convs diverged at 2e-3
  # OAA accumulates from the first step, every group member's map (as measured in docs/groupwise.md;
  # OAA's own schedule starts at the second epoch and takes the anchor only).
  config.cams.oaa_first_epoch = 0
  config.cams.oaa_members = 'all'
  config.train.log_every_steps = 25
  config.train.checkpoint_every_steps = 100

  config.seg.batch_size = 4
  config.seg.crop_size = 96
  config.seg.num_steps = 120
  config.seg.head_warmup_steps = 40
  config.seg.base_lr = 2.5e-4
  config.seg.log_every_steps = 40
  config.seg.checkpoint_every_steps = 60
  return config
