"""Multi-scale and flip inference of a segmentation network, and the canvas images are padded to.

DeepLab's test-time augmentation: run the network on the image resized by each scale (and its
mirror image), upsample each output's logits bilinearly to the full input size, and average the
softmax probabilities. Shapes are static (one compilation per canvas size): images of one
evaluation are padded to a common canvas, and the network sees the padding as DeepLab's Caffe
test does (its 513x513 canvas); the caller crops the valid region.
"""

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# The canvas side is a multiple of this (the network's output stride divides it).
CANVAS_MULTIPLE = 8


def make_predict_fn(module, scales, flip: bool, with_probs: bool = False):
  """jit(variables, images [B, H, W, 3]) -> labels uint8 [B, H, W] (and the probabilities
  [B, H, W, K] with `with_probs`), by `multiscale_probs`."""
  def predict(variables, images):
    probs = multiscale_probs(lambda x: module.apply(variables, x, train=False), images, scales,
                             flip)
    labels = jnp.argmax(probs, axis=-1).astype(jnp.uint8)
    return (labels, probs) if with_probs else labels
  return jax.jit(predict)


def scaled_hw(hw: Sequence[int], scale: float) -> tuple[int, int]:
  """Size of an image of size `hw` resized by `scale` (rounded up, as Caffe's Interp)."""
  return tuple(max(1, int(math.ceil(s * scale - 1e-6))) for s in hw)


def resize_bilinear(x, hw: Sequence[int]):
  """Bilinear resize of [B, H, W, C] to `hw` (half-pixel centres, no anti-aliasing: the
  interpolation DeepLab's multi-scale input and logit upsampling use)."""
  hw = tuple(int(v) for v in hw)
  if tuple(x.shape[1:3]) == hw:
    return x
  return jax.image.resize(x, (x.shape[0],) + hw + (x.shape[3],), 'bilinear', antialias=False)


def multiscale_probs(apply_fn: Callable, images, scales: Sequence[float] = (1.0,),
                     flip: bool = False):
  """Softmax probabilities [B, H, W, K] averaged over `scales` x (identity, mirror).

  Args:
    apply_fn: maps images [B, h, w, 3] to logits [B, h', w', K] at any output stride.
    images: normalised images [B, H, W, 3].
    scales: input scales (DeepLab: 0.5, 0.75, 1.0, ...).
    flip: also run each scale on the horizontal mirror image and mirror its output back.
  """
  out_hw = images.shape[1:3]
  total = None
  count = 0
  for scale in scales:
    x = resize_bilinear(images, scaled_hw(out_hw, scale))
    for mirrored in ((False, True) if flip else (False,)):
      logits = apply_fn(x[:, :, ::-1] if mirrored else x)
      logits = resize_bilinear(logits.astype(jnp.float32), out_hw)
      probs = jax.nn.softmax(logits[:, :, ::-1] if mirrored else logits, axis=-1)
      total = probs if total is None else total + probs
      count += 1
  return total / count


def canvas_size(sizes: Sequence[Sequence[int]], multiple: int = CANVAS_MULTIPLE) -> tuple:
  """The smallest (H, W), multiples of `multiple`, that holds every (h, w) in `sizes`."""
  sizes = np.asarray(list(sizes), np.int64).reshape(-1, 2)
  top = sizes.max(axis=0)
  return tuple(int(-(-v // multiple) * multiple) for v in top)


def pad_to(image: np.ndarray, hw: Sequence[int], value=0) -> np.ndarray:
  """Pads [H, W, ...] at the bottom/right to `hw` with `value`."""
  pads = [(0, int(hw[0]) - image.shape[0]), (0, int(hw[1]) - image.shape[1])]
  pads += [(0, 0)] * (image.ndim - 2)
  return np.pad(image, pads, constant_values=value)
