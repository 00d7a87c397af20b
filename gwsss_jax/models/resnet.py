"""Dilated ResNet-101 with an optionally frozen BatchNorm, as DeepLab trains it.

Layout: torchvision's Bottleneck ResNet (stride on the 3x3 convolution, "v1.5"), or with
`stride_in_1x1=True` the original Caffe ResNet (stride on the first 1x1 convolution) that
DeepLab-v2's COCO initialisation was trained with. Module names map one-to-one onto torchvision
state-dict keys (`layer3.5.conv2.weight` -> `layer3_5/conv2/kernel`; `layer1.0.downsample.{0,1}`
-> `layer1_0/downsample_conv`, `layer1_0/downsample_bn`; see `gwsss_jax.models.convert`).

Output stride (DeepLab-v2, Chen et al. TPAMI 2017): 8 -> layer3 stride 1 dilation 2 and layer4
stride 1 dilation 4; 16 -> layer4 stride 1 dilation 2; 32 -> the ImageNet network. Every block of
a dilated layer uses the layer's dilation, as DeepLab-v2 does (torchvision's
`replace_stride_with_dilation` keeps the previous dilation in a layer's first block).

Frozen BatchNorm (`freeze_bn=True`): the running statistics are used in training as in
inference and never updated, and `scale`/`bias` pass through `jax.lax.stop_gradient`, so their
gradients are exactly zero. Their weight decay is the optimizer's business: mask them with
`batchnorm_mask` (e.g. `optax.masked(optax.add_decayed_weights(wd), ...)`) or they decay.
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp

from gwsss_jax.models import pooling
from gwsss_jax.models.vgg import scaled

# torch.nn.BatchNorm2d defaults (eps 1e-5, running-average momentum 0.1 -> decay 0.9).
BN_EPSILON = 1e-5
BN_DECAY = 0.9


class BatchNorm(nn.Module):
  """BatchNorm over the channel axis with torch semantics and an optional frozen mode.

  Variables as flax's `nn.BatchNorm`: params `scale`, `bias`; batch_stats `mean`, `var`.
  Statistics are computed in float32 whatever the activation dtype.
  """
  frozen: bool = True
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
    if self.frozen:
      scale, bias = jax.lax.stop_gradient(scale), jax.lax.stop_gradient(bias)
    if train and not self.frozen:
      x32 = x.astype(jnp.float32)
      mean = jnp.mean(x32, axis=(0, 1, 2))
      mean_sq = jnp.mean(jnp.square(x32), axis=(0, 1, 2))
      if self.axis_name is not None:
        mean, mean_sq = jax.lax.pmean((mean, mean_sq), self.axis_name)
      var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
      if not self.is_initializing():
        ra_mean.value = BN_DECAY * ra_mean.value + (1 - BN_DECAY) * mean
        ra_var.value = BN_DECAY * ra_var.value + (1 - BN_DECAY) * var
    else:
      mean, var = ra_mean.value, ra_var.value
    mul = scale * jax.lax.rsqrt(var + BN_EPSILON)
    return (x * mul.astype(self.dtype) + (bias - mean * mul).astype(self.dtype)).astype(self.dtype)


def _conv(features: int, kernel: int, stride: int = 1, dilation: int = 1, *, name: str,
          dtype: Any):
  """torch-style convolution: symmetric padding dilation * (kernel - 1) / 2, no bias.

  Explicit padding matters with stride 2: 'SAME' would pad (0, 1) on even sizes where torch
  pads (1, 1), shifting every window by one pixel.
  """
  pad = dilation * (kernel - 1) // 2
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                 kernel_dilation=dilation, use_bias=False, dtype=dtype, name=name)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (dilated) -> 1x1 (x4 channels) residual block, post-activation."""
  planes: int
  stride: int = 1
  dilation: int = 1
  downsample: bool = False
  stride_in_1x1: bool = False
  freeze_bn: bool = True
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = functools.partial(BatchNorm, frozen=self.freeze_bn, axis_name=self.bn_axis_name,
                             dtype=self.dtype)
    stride_1x1, stride_3x3 = (self.stride, 1) if self.stride_in_1x1 else (1, self.stride)
    y = _conv(self.planes, 1, stride_1x1, name='conv1', dtype=self.dtype)(x)
    y = nn.relu(norm(name='bn1')(y, train))
    y = _conv(self.planes, 3, stride_3x3, self.dilation, name='conv2', dtype=self.dtype)(y)
    y = nn.relu(norm(name='bn2')(y, train))
    y = _conv(4 * self.planes, 1, name='conv3', dtype=self.dtype)(y)
    y = norm(name='bn3')(y, train)
    if self.downsample:
      x = _conv(4 * self.planes, 1, self.stride, name='downsample_conv', dtype=self.dtype)(x)
      x = norm(name='downsample_bn')(x, train)
    return nn.relu(y + x)


def _max_pool_3x3_s2(x, ceil_mode: bool):
  """torch `MaxPool2d(3, 2, padding=1, ceil_mode=...)` on NHWC (pads with -inf)."""
  pads = []
  for size in x.shape[1:3]:
    out = -(-(size + 2 - 3) // 2) + 1 if ceil_mode else (size + 2 - 3) // 2 + 1
    if ceil_mode and (out - 1) * 2 >= size + 1:  # torch: the last window must start inside
      out -= 1
    pads.append((1, (out - 1) * 2 + 3 - size - 1))
  return pooling.max_pool(x, 3, 2, pads)


# Per output stride: (stride, dilation) of layer2, layer3, layer4.
_SCHEDULE = {8: ((2, 1), (1, 2), (1, 4)), 16: ((2, 1), (2, 1), (1, 2)),
             32: ((2, 1), (2, 1), (2, 1))}


class ResNet(nn.Module):
  """Bottleneck ResNet trunk; returns {'layer1': ..., 'layer4': ...} (layer4 = the output).

  Attributes:
    stage_sizes: blocks per layer ((3, 4, 23, 3) for ResNet-101).
    width: channel multiplier (tests, CPU demo); layer4 has round(512 * width) * 4 channels.
    output_stride: 8, 16 or 32 (see the module docstring).
    freeze_bn: BatchNorm always uses the running statistics, which never change, and its
      scale/bias get zero gradients.
    stride_in_1x1: the Caffe layout (DeepLab-v2 COCO initialisation) instead of torchvision's.
    pool_ceil_mode: the stem max-pool rounds up like Caffe and the DeepLab-v2 PyTorch port
      (differs from torchvision on even sizes after conv1, e.g. a 32x32 input).
    bn_axis_name: a mapped axis to average batch statistics over (unfrozen BN only).
    dtype: activation dtype (parameters and BN statistics stay float32).
  """
  stage_sizes: Sequence[int] = (3, 4, 23, 3)
  width: float = 1.0
  output_stride: int = 8
  freeze_bn: bool = True
  stride_in_1x1: bool = False
  pool_ceil_mode: bool = False
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False) -> dict:
    if self.output_stride not in _SCHEDULE:
      raise ValueError(f'output_stride must be 8, 16 or 32, got {self.output_stride}')
    x = x.astype(self.dtype)
    x = _conv(scaled(64, self.width), 7, 2, name='conv1', dtype=self.dtype)(x)
    x = BatchNorm(self.freeze_bn, self.bn_axis_name, self.dtype, name='bn1')(x, train)
    x = _max_pool_3x3_s2(nn.relu(x), self.pool_ceil_mode)
    schedule = ((1, 1),) + _SCHEDULE[self.output_stride]
    features = {}
    for i, (blocks, (stride, dilation)) in enumerate(zip(self.stage_sizes, schedule)):
      planes = scaled(64 * 2**i, self.width)
      for j in range(blocks):
        x = Bottleneck(planes, stride if j == 0 else 1, dilation, downsample=j == 0,
                       stride_in_1x1=self.stride_in_1x1, freeze_bn=self.freeze_bn,
                       bn_axis_name=self.bn_axis_name, dtype=self.dtype,
                       name=f'layer{i + 1}_{j}')(x, train)
      features[f'layer{i + 1}'] = x
    return features


ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3))
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3))


_BN_NAMES = ('bn1', 'bn2', 'bn3', 'downsample_bn')


def batchnorm_mask(params) -> Any:
  """A pytree of bools like `params`: True for BatchNorm scale/bias leaves.

  For the optimizer when `freeze_bn=True`: exclude these leaves from weight decay and updates
  (their gradients are already zero).
  """
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict(
      {path: any(p in _BN_NAMES for p in path[:-1]) for path in flat})
