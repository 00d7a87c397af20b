"""DeepLab-v2 (ResNet-101 + ASPP) and DeepLab-LargeFOV (VGG16), the segmentation networks
trained on the pseudo labels (Chen et al., TPAMI 2017; the paper's "DeepLab-v2" rows).

Both map a normalised [B, H, W, 3] image to class logits at output stride 8
([B, ceil(H / 8), ceil(W / 8), num_classes] up to the trunk's rounding); the caller upsamples.

Parameter layout: the trunk is the submodule `backbone` (module names of
`gwsss_jax.models.resnet` / `gwsss_jax.models.vgg`, so converted ImageNet or COCO weights load
as they are); DeepLab-v2's ASPP is the submodule `aspp` with the four convolutions
`aspp_0 ... aspp_3` (the `fc1_voc12_c0 ... c3` of DeepLab's Caffe model), LargeFOV's head is
`fc6`, `fc7`, `fc8`. `param_labels` splits the parameters into the learning-rate groups of
DeepLab's solver.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
from flax import traverse_util
import jax.numpy as jnp

from gwsss_jax.models import resnet
from gwsss_jax.models import vgg

ASPP_RATES = (6, 12, 18, 24)
# DeepLab's Caffe solvers initialise the new classifier layers from N(0, 0.01), biases 0.
_HEAD_INIT = nn.initializers.normal(stddev=0.01)

# Learning-rate groups of `param_labels`.
BACKBONE_WEIGHT = 'backbone_weight'
BACKBONE_BIAS = 'backbone_bias'
HEAD_WEIGHT = 'head_weight'
HEAD_BIAS = 'head_bias'
FROZEN = 'frozen'
LABELS = (BACKBONE_WEIGHT, BACKBONE_BIAS, HEAD_WEIGHT, HEAD_BIAS, FROZEN)


class ASPP(nn.Module):
  """Atrous spatial pyramid pooling of DeepLab-v2: parallel 3x3 convolutions with dilations
  `rates` straight to class scores, fused by summation (not concatenation as in v3)."""
  num_classes: int
  rates: Sequence[int] = ASPP_RATES
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    out = None
    for i, rate in enumerate(self.rates):
      y = nn.Conv(self.num_classes, (3, 3), kernel_dilation=rate,
                  padding=((rate, rate), (rate, rate)), kernel_init=_HEAD_INIT,
                  bias_init=nn.initializers.zeros, dtype=self.dtype, name=f'aspp_{i}')(x)
      out = y if out is None else out + y
    return out


class DeepLabV2(nn.Module):
  """ResNet-101 (dilated, output stride 8 by default, frozen BatchNorm) + ASPP.

  Attributes:
    num_classes: including background.
    width: channel multiplier of the trunk (tests, CPU demo).
    output_stride: 8 (DeepLab-v2) or 16.
    freeze_bn: BatchNorm statistics and affine parameters frozen, as DeepLab-v2 trains with
      batch 10 (too small for batch statistics).
    stride_in_1x1, pool_ceil_mode: the Caffe ResNet layout of DeepLab's COCO initialisation
      (`build_segmenter(..., caffe_layout=True)`).
    dtype: activation dtype; logits are returned in float32.
    stage_sizes: blocks per ResNet layer (ResNet-101; tests use a shallower trunk).
  """
  num_classes: int
  width: float = 1.0
  output_stride: int = 8
  freeze_bn: bool = True
  stride_in_1x1: bool = False
  pool_ceil_mode: bool = False
  dtype: Any = jnp.float32
  stage_sizes: Sequence[int] = (3, 4, 23, 3)

  @nn.compact
  def __call__(self, x, train: bool = False):
    features = resnet.ResNet(stage_sizes=self.stage_sizes, width=self.width,
                             output_stride=self.output_stride, freeze_bn=self.freeze_bn,
                             stride_in_1x1=self.stride_in_1x1, pool_ceil_mode=self.pool_ceil_mode,
                             dtype=self.dtype, name='backbone')(x, train)
    logits = ASPP(self.num_classes, dtype=self.dtype, name='aspp')(features['layer4'])
    return logits.astype(jnp.float32)


class DeepLabLargeFOV(nn.Module):
  """DeepLab-LargeFOV (Chen et al., ICLR 2015) on the VGG16 trunk, output stride 8.

  Trunk: pools 1-3 3x3 stride 2, pool4 3x3 stride 1, conv5 dilated by 2, pool5 3x3 stride 1,
  then the 3x3 stride-1 average pool (`pool5a`) of DeepLab-v2's LargeFOV model; head: fc6 3x3
  dilation 12 (1024) + ReLU + dropout 0.5, fc7 1x1 (1024) + ReLU + dropout 0.5, fc8 1x1.
  fc6/fc7 start from VGG16's fc6/fc7, decimated as DeepLab does, when the converted weights
  carry them (torchvision's file: `convert.largefov_fc_from_torchvision`), otherwise from the
  default initialiser (then `seg.head_warmup_steps` matters); fc8 from N(0, 0.01).
  """
  num_classes: int
  width: float = 1.0
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = vgg.VGG16LargeFOV(width=self.width, dtype=self.dtype, name='backbone')(x)
    x = nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))
    fc_dim = vgg.scaled(1024, self.width)
    x = nn.Conv(fc_dim, (3, 3), kernel_dilation=12, padding=((12, 12), (12, 12)),
                dtype=self.dtype, name='fc6')(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(x))
    x = nn.Conv(fc_dim, (1, 1), dtype=self.dtype, name='fc7')(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(x))
    x = nn.Conv(self.num_classes, (1, 1), kernel_init=_HEAD_INIT,
                bias_init=nn.initializers.zeros, dtype=self.dtype, name='fc8')(x)
    return x.astype(jnp.float32)


def caffe_layout(meta: Optional[dict]) -> bool:
  """Whether converted weights are DeepLab's Caffe ResNet-101 (`arch` 'resnet101_caffe' of
  `convert.save_pretrained`: stride in the first 1x1 conv, ceil-mode stem pool)."""
  return bool(meta) and meta.get('arch') == 'resnet101_caffe'


def build_segmenter(seg_config, caffe_layout: bool = False) -> nn.Module:
  """The module named by `config.seg.model` ('deeplab_v2_resnet101' or
  'deeplab_largefov_vgg16'); `caffe_layout` (the `caffe_layout(meta)` of its weights, as the
  run's record keeps it) selects the Caffe ResNet layout of DeepLab's COCO initialisation."""
  dtype = jnp.dtype(seg_config.dtype)
  if seg_config.model == 'deeplab_v2_resnet101':
    return DeepLabV2(num_classes=seg_config.num_classes, width=seg_config.width,
                     output_stride=seg_config.output_stride, freeze_bn=True,
                     stride_in_1x1=caffe_layout, pool_ceil_mode=caffe_layout, dtype=dtype)
  if seg_config.model == 'deeplab_largefov_vgg16':
    return DeepLabLargeFOV(num_classes=seg_config.num_classes, width=seg_config.width,
                           dtype=dtype)
  raise ValueError(f'unknown segmentation model {seg_config.model!r}')


def param_labels(params, pretrained_head: Sequence[str] = ()) -> Any:
  """A pytree like `params` of learning-rate group names (DeepLab's Caffe `lr_mult`s).

  - `backbone_weight` (x1) and `backbone_bias` (x seg.backbone_bias_lr_mult = 2): the trunk
    (VGG's conv biases; ResNet has none), and the head modules named in `pretrained_head`:
    LargeFOV's fc6/fc7 when they come from VGG16's fully connected layers, trained at lr_mult
    1/2 as in DeepLab's prototxt;
  - `head_weight` (x seg.new_lr_mult = 10) and `head_bias` (x seg.new_bias_lr_mult = 20), the
    new layers: ASPP (also when DeepLab's COCO initialisation provides it, as DeepLab-v2's
    `fc1_voc12` layers), and LargeFOV's fc8 and new fc6/fc7;
  - `frozen`: the frozen BatchNorm scale/bias (no update, no weight decay).
  Biases get no weight decay (Caffe `decay_mult: 0`).
  """
  flat = traverse_util.flatten_dict(params)
  frozen_bn = traverse_util.flatten_dict(resnet.batchnorm_mask(params))
  trunk = {'backbone', *pretrained_head}
  labels = {}
  for path in flat:
    if frozen_bn[path]:
      labels[path] = FROZEN
      continue
    group = 'backbone' if path[0] in trunk else 'head'
    labels[path] = f'{group}_{"bias" if path[-1] == "bias" else "weight"}'
  return traverse_util.unflatten_dict(labels)
