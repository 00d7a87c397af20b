"""COCO 2014 (80 classes): the paper's Table 2 setting (VGG16, val mIoU 28.4).

Run:
  python -m gwsss_jax.main --config=configs/coco.py --workdir=runs/coco \
    --config.data.root=/data/coco --config.data.saliency_dir=/data/coco/saliency_dss

`data.root` holds `train2014/`, `val2014/` and `annotations/instances_{train,val}2014.json`.
"""

from gwsss_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.data.name = 'coco'
  config.data.num_classes = 80
  config.data.train_split = 'train2014'
  config.data.val_split = 'val2014'
  config.seg.model = 'deeplab_largefov_vgg16'
  config.seg.num_steps = 100000
  return config
