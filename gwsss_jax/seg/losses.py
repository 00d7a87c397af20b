"""The segmentation loss of DeepLab-v2: pixel-wise softmax cross-entropy with an ignore label,
optionally over the multi-scale (MSC) outputs.

Resolution: the logits (output stride 8) are upsampled bilinearly to the label size, as the
widely used PyTorch ports do, rather than the labels shrunk to the logits by nearest
neighbour as DeepLab-v2's Caffe `Interp` does. The supervision then sees every labelled pixel,
which matters on the small crops of the CPU demo (112 px -> 14x14 logits).
"""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from gwsss_jax.seg import inference

IGNORE = 255
MSC_SCALES = (0.75, 0.5)


def cross_entropy(logits, labels, ignore: int = IGNORE):
  """Mean softmax cross-entropy over the pixels whose label is not `ignore` (0 if none).

  Args:
    logits: [B, h, w, K] at any stride; upsampled to the labels' size first.
    labels: [B, H, W] integer class indices, `ignore` where unlabelled.
  """
  logits = inference.resize_bilinear(logits.astype(jnp.float32), labels.shape[1:3])
  valid = (labels != ignore) & (labels >= 0) & (labels < logits.shape[-1])
  safe = jnp.where(valid, labels, 0).astype(jnp.int32)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
  count = jnp.sum(valid)
  return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(count, 1), count


def msc_outputs(apply_fn: Callable, images, scales: Sequence[float] = MSC_SCALES) -> list:
  """DeepLab-v2's multi-scale outputs: logits of the image at scale 1, at each of `scales`
  (upsampled to the scale-1 logits), and their elementwise maximum.

  `apply_fn(images, index)` maps images to logits; `index` numbers the scales (its own
  dropout key).
  """
  full = apply_fn(images, 0)
  outputs = [full]
  for i, scale in enumerate(scales):
    small = apply_fn(inference.resize_bilinear(images, inference.scaled_hw(
        images.shape[1:3], scale)), i + 1)
    outputs.append(inference.resize_bilinear(small, full.shape[1:3]))
  outputs.append(jnp.max(jnp.stack(outputs), axis=0))
  return outputs


def segmentation_loss(apply_fn: Callable, images, labels, msc: bool):
  """The training loss and its terms: one cross-entropy, or with `msc` the sum of the four
  MSC terms (scale 1, 0.75, 0.5, max) as DeepLab-v2 sums its four loss layers."""
  if not msc:
    loss, count = cross_entropy(apply_fn(images, 0), labels)
    return loss, {'labelled_fraction': count / labels.size}
  outputs = msc_outputs(apply_fn, images)
  terms = [cross_entropy(o, labels) for o in outputs]
  names = ('loss_100', 'loss_075', 'loss_050', 'loss_max')
  scalars = {n: t[0] for n, t in zip(names, terms)}
  scalars['labelled_fraction'] = terms[0][1] / labels.size
  return sum(t[0] for t in terms), scalars
