"""What the authors' PyTorch release (Lixy1997/Group-WSSS) does, on PASCAL VOC 2012 + SBD.

`model.variant='release'` (its network: class-map nodes, groups of 3, its graph and loss,
N(0, 0.01) new weights with PyTorch's default biases) plus its input pipeline, group rule, OAA
accumulation and pseudo-label rule. docs/release.md lists every difference from the paper
variant (configs/voc.py) and what is still not reproduced.

Run (needs the VOC data, DSS saliency maps, the torchvision VGG16 weights and a GPU):
  python -m gwsss_jax.main --config=configs/release.py --workdir=runs/release \
    --config.data.root=/data/VOCdevkit/VOC2012 \
    --config.data.saliency_dir=/data/VOCdevkit/VOC2012/saliency_dss \
    --config.model.pretrained=weights/vgg16_torchvision

Expected: not measured with this code. The paper reports DeepLab-v2 ResNet-101 val mIoU 68.2 for
its model; the release gives no figure of its own.
"""

from gwsss_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.data.name = 'voc'
  config.data.train_split = 'train_aug'
  config.data.val_split = 'val'
  # utils/LoadData.py: Resize(256) of its own transforms is a 256 x 256 square; ColorJitter,
  # ToTensor, Normalize(ImageNet); the crop size is parsed and never used; no flip.
  config.data.resize_mode = 'square'
  config.data.resize = 256
  config.data.crop_size = 0
  config.data.flip = False
  config.data.color_jitter = (0.3, 0.3, 0.3, 0.1)
  config.data.normalization = 'imagenet_rgb'

  config.model.variant = 'release'
  config.model.num_nodes = 3   # anchor + two partners, hard-coded
  # models/vgg_gnn.py's GDL takes the drop mask when floor(U + drop_rate) = 1, with train.py's
  # --drop_rate 0.8: the importance map (delta_r of Eq. 10) with probability 1 - 0.8.
  config.model.importance_prob = 0.2

  # train.py: batch 1, DataLoader(shuffle=False): anchors in list order; partners by its rule.
  config.train.batch_size = 1
  config.train.anchor_order = 'list'
  config.train.group_rule = 'release'

  # models/vgg_gnn.py: the anchor's maps (item 0) from the second epoch on; the last epoch
  # writes the missing ones; the test reads the anchor's graph readout.
  config.cams.method = 'oaa'
  config.cams.source = 'ensemble'
  config.cams.prob_threshold = 0.1
  config.cams.oaa_members = 'anchor'
  config.cams.oaa_first_epoch = 1
  config.cams.oaa_fill_last_epoch = True

  # gen_labels.py: min-max normalised maps, thresholds 0.9 / 32 / 0.8, 1% foreground.
  config.pseudo.cam_norm = 'minmax'
  return config
