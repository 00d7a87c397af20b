"""The built-in dataset end to end on a 2-core CPU in about 10 minutes.

Run (or `make demo`):
  python -m gwsss_jax.main --config=configs/demo.py --workdir=runs/demo

The dataset is generated into <workdir>/data/synthetic when `data.root` is empty. The backbone is
a reduced-width VGG16 trained from scratch; the figures it should give are in the README.
"""

from gwsss_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.data.name = 'synthetic'
  config.data.num_classes = 6
  config.data.train_split = 'train'
  config.data.val_split = 'val'
  config.data.crop_size = 112
  config.data.resize = 128
  config.data.synthetic.num_train = 600
  config.data.synthetic.num_val = 200
  config.data.synthetic.size = 128
  config.data.saliency_dir = 'SalMaps'  # relative to data.root

  config.model.width = 0.125
  config.model.node_dim = 64
  config.model.num_nodes = 3
  config.train.batch_size = 4
  config.train.num_epochs = 6
  config.train.decay_every_epochs = 4
  config.train.base_lr = 1e-2
  config.train.log_every_steps = 25
  config.train.checkpoint_every_steps = 100

  config.cams.scales = (1.0,)
  config.cams.flip = False

  config.seg.model = 'deeplab_largefov_vgg16'
  config.seg.width = 0.125
  config.seg.batch_size = 8
  config.seg.crop_size = 112
  config.seg.num_steps = 600
  config.seg.base_lr = 1e-2
  config.seg.log_every_steps = 100
  config.seg.checkpoint_every_steps = 300
  return config
