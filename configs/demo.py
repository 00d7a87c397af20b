"""The built-in dataset end to end on a CPU in minutes.

Run (or `make demo`, which also fetches the ImageNet VGG16 weights and trains the oracle):
  python -m gwsss_jax.main --config=configs/demo.py --workdir=runs/demo \
    --config.model.pretrained=.cache/weights/vgg16_imagenet_onnx \
    --config.seg.pretrained=.cache/weights/vgg16_imagenet_onnx

The dataset is generated into <workdir>/data/synthetic when `data.root` is empty. The networks
are full-width VGG16 (the paper's classifier trunk and DeepLab-LargeFOV) on small images with a
small graph (64-channel nodes, 1x1 ConvGRU) and short schedules; the figures it gives are in the
README. Without `model.pretrained` it trains from scratch, which this short schedule cannot do.
"""

from gwsss_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.data.name = 'synthetic'
  config.data.num_classes = 6
  config.data.train_split = 'train'
  config.data.val_split = 'val'
  config.data.crop_size = 80
  config.data.resize = 88
  config.data.synthetic.num_train = 400
  config.data.synthetic.num_val = 100
  config.data.synthetic.size = 128
  config.data.saliency_dir = 'SalMaps'  # relative to data.root

  config.model.node_dim = 64
  config.model.gru_kernel = 1
  config.model.num_nodes = 3
  config.train.batch_size = 2
  config.train.num_epochs = 1
  # Below the paper's 1e-3: the He-initialised extra convolutions make larger rates diverge
  # within the demo's schedule.
  config.train.base_lr = 5e-4
  config.train.log_every_steps = 25
  config.train.checkpoint_every_steps = 100

  # One epoch: accumulate from it, over every group member (several maps per image).
  config.cams.oaa_first_epoch = 0
  config.cams.oaa_members = 'all'
  config.cams.scales = (1.0,)
  config.cams.flip = False
  config.cams.num_vis = 6

  config.seg.model = 'deeplab_largefov_vgg16'
  config.seg.batch_size = 4
  config.seg.crop_size = 80
  config.seg.num_steps = 150
  config.seg.base_lr = 2.5e-4
  # LargeFOV's fc6/fc7 start random (the converted VGG16 has no fc weights): fine-tuning the
  # trunk from the first step through them left it predicting background everywhere.
  config.seg.head_warmup_steps = 50
  config.seg.log_every_steps = 50
  config.seg.checkpoint_every_steps = 75
  return config
