"""PASCAL VOC 2012 + SBD with the paper's settings (VGG16, K=4, T=3, 224x224, 15 epochs).

Run:
  python -m gwsss_jax.main --config=configs/voc.py --workdir=runs/voc \
    --config.data.root=/data/VOCdevkit/VOC2012 \
    --config.data.saliency_dir=/data/VOCdevkit/VOC2012/saliency_dss \
    --config.model.pretrained=weights/vgg16_torchvision

Expected (paper, Table 1): DeepLab-v2 val mIoU 63.3 (VGG16 classifier); 68.2 with
`--config.model.backbone=resnet101`. Ablations are one-line overrides, e.g.
`--config.model.num_nodes=3` (Table 3: K=3 -> 68.1).
"""

from gwsss_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.data.name = 'voc'
  config.data.train_split = 'train_aug'
  config.data.val_split = 'val'
  return config
