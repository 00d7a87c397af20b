"""Input normalisation conventions: the one table that the weight converters record and the input
pipelines apply, so training, CAM export and segmentation feed a network exactly what its
weights expect.

A convention ("spec") is a dict: `name`, `channel_order` ('rgb' or 'bgr'), `mean` and `std`
(three values each, in the channel order, on 0..255 pixels). A pretrained file stores its spec
in `pretrained.json` (`models.convert`); a spec may override the named one's values, as
DeepLab's Caffe COCO initialisation does with its own BGR mean.
"""

from typing import Union

import numpy as np

from gwsss_jax.common.errors import UserError

NORMALIZATIONS = {
    # torchvision: RGB scaled to 0..1, then the ImageNet mean/std (here x 255).
    'imagenet_rgb': {'channel_order': 'rgb', 'mean': (123.675, 116.28, 103.53),
                     'std': (58.395, 57.12, 57.375)},
    # Caffe VGG16 / Keras 'caffe' mode: BGR, 0..255, ILSVRC mean subtracted, no scaling.
    'caffe_bgr': {'channel_order': 'bgr', 'mean': (103.939, 116.779, 123.68),
                  'std': (1.0, 1.0, 1.0)},
}
# DeepLab-v2's Caffe models subtract a slightly different BGR mean (its prototxt's values).
DEEPLAB_CAFFE_MEAN = (104.008, 116.669, 122.675)

Spec = Union[str, dict]


def normalization_spec(name: str, **overrides) -> dict:
  """The spec of a named convention, with `overrides` (e.g. mean=...) applied."""
  if name not in NORMALIZATIONS:
    raise UserError(f'unknown normalization {name!r}; choose from {", ".join(NORMALIZATIONS)}'
                    " (resolve 'auto' from the weights first)")
  spec = {'name': name, **NORMALIZATIONS[name]}
  spec.update(overrides)
  return spec


def resolve(spec: Spec) -> dict:
  """A full spec from a name or a (possibly stored) spec dict; checks its fields."""
  if isinstance(spec, str):
    return normalization_spec(spec)
  try:
    order, mean, std = spec['channel_order'], spec['mean'], spec['std']
  except (KeyError, TypeError) as e:
    raise UserError(f'normalization {spec!r}: needs channel_order, mean and std') from e
  if order not in ('rgb', 'bgr') or len(mean) != 3 or len(std) != 3:
    raise UserError(f'normalization {spec!r}: channel_order must be rgb or bgr, mean and std '
                    'three values each')
  return dict(spec)


def constants(spec: Spec):
  """(bgr: bool, mean float32 [3], std float32 [3]) of a convention."""
  s = resolve(spec)
  return (s['channel_order'] == 'bgr', np.asarray(s['mean'], np.float32),
          np.asarray(s['std'], np.float32))


def normalize(images, spec: Spec):
  """Maps RGB images with values 0..255 ([..., 3]) to the network's input convention.

  Works on numpy arrays (or nested lists) and jax arrays alike and returns the same kind,
  float32. The tf.data pipelines apply the same `constants` in TensorFlow.
  """
  bgr, mean, std = constants(spec)
  x = images.astype(np.float32) if hasattr(images, 'astype') else np.asarray(images, np.float32)
  if bgr:
    x = x[..., ::-1]
  return (x - mean) / std
