"""VGG16 convolutional trunk, configurable for the classifier and for DeepLab-LargeFOV.

The default configuration is the one of the paper's release (REFERENCE_NOTES.md, config 'D1'):
blocks 1-3 end with a 2x2 stride-2 max-pool, block 4 with a 3x3 stride-1 max-pool (pad 1), and
block 5's three convolutions are dilated by 2, so the output stride is 8 (224 -> 28) while the
receptive field keeps growing as in the undilated network. There is no pool after block 5: the
classifier's extra convolutions follow.

The 13 convolutions are named `conv1_1 ... conv5_3` so that ImageNet weights map one-to-one
(`gwsss_jax.models.convert`); at width 1 they hold 14,714,688 parameters, the number of the
standard VGG16 without its fully-connected layers.
"""

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from gwsss_jax.models import pooling

# (block, number of convolutions, output channels) of VGG16 (Simonyan & Zisserman, config D).
BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))


def scaled(channels: int, width: float) -> int:
  """Channel count under the width multiplier (tests and the CPU demo use width < 1)."""
  return max(1, int(round(channels * width)))


def max_pool(x, window: int, stride: int):
  """Max-pool with torch/Caffe-style symmetric padding `(window - 1) // 2` (pads with -inf).

  `pooling.max_pool`: the value of `nn.max_pool`, with a gradient fast on XLA:CPU.

  2x2/2 gives floor(H / 2) like torch `MaxPool2d(2, 2)`; 3x3/1 keeps the size like
  `MaxPool2d(3, 1, 1)`; 3x3/2 is DeepLab's pool (`MaxPool2d(3, 2, 1)`).
  """
  pad = (window - 1) // 2
  return pooling.max_pool(x, window, stride, ((pad, pad), (pad, pad)))


# torchvision's VGG initialisation (kaiming_normal_, fan_out, ReLU gain) for training from
# scratch; flax's default lecun_normal halves the signal's variance at every ReLU layer.
KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

class VGG16(nn.Module):
  """VGG16 convolutions with a configurable tail; maps [B, H, W, 3] to [B, H', W', C].

  Attributes:
    width: channel multiplier; C = round(512 * width) (at least 1 channel per layer).
    dtype: activation dtype (parameters stay float32).
    pool_window: blocks 1-3 pool window with stride 2: 2 (VGG, release) or 3 with pad 1
      (DeepLab-LargeFOV's Caffe pools; odd inputs such as 321 then give 41 = ceil(321 / 8)).
    pool4_window, pool4_stride: the pool after block 4; 3/1 (release, LargeFOV) keeps output
      stride 8, 2/2 is the ImageNet VGG16.
    conv5_dilation: dilation (= padding) of block 5's convolutions: 2 after a stride-1 pool4
      (release, LargeFOV), 1 for the ImageNet VGG16.
    pool5: add DeepLab-LargeFOV's 3x3 stride-1 pad-1 max-pool after block 5.
  """
  width: float = 1.0
  dtype: Any = jnp.float32
  pool_window: int = 2
  pool4_window: int = 3
  pool4_stride: int = 1
  conv5_dilation: int = 2
  pool5: bool = False

  @nn.compact
  def __call__(self, x):
    x = x.astype(self.dtype)
    for block, num_convs, channels in BLOCKS:
      dilation = self.conv5_dilation if block == 5 else 1
      for i in range(1, num_convs + 1):
        x = nn.Conv(scaled(channels, self.width), (3, 3), kernel_dilation=dilation,
                    padding=((dilation, dilation), (dilation, dilation)), dtype=self.dtype,
                    kernel_init=KAIMING_FAN_OUT, name=f'conv{block}_{i}')(x)
        x = nn.relu(x)
      if block <= 3:
        x = max_pool(x, self.pool_window, 2)
      elif block == 4:
        x = max_pool(x, self.pool4_window, self.pool4_stride)
      elif self.pool5:
        x = max_pool(x, 3, 1)
    return x


# The ImageNet network's convolutions (output stride 16 without pool5): the layout of the
# torchvision, Keras and ONNX files, used by the parity tests of the converters.
VGG16ImageNet = functools.partial(VGG16, pool4_window=2, pool4_stride=2, conv5_dilation=1)
# DeepLab-LargeFOV's trunk (Chen et al., ICLR 2015): output stride 8, pools 3x3 as in Caffe.
VGG16LargeFOV = functools.partial(VGG16, pool_window=3, pool5=True)
