"""The PASCAL VOC colour map and palette PNG label files."""

import io
import os

import numpy as np
from absl import logging
from PIL import Image

from gwsss_jax.common import io as gio
from gwsss_jax.common.errors import UserError

IGNORE = 255
VOC_CLASSES = ('background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car',
               'cat', 'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person',
               'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor')


def voc_colormap(n: int = 256) -> np.ndarray:
  """The bit-interleaved VOC colour map, [n, 3] uint8 RGB (index 255 is (224, 224, 192))."""
  cmap = np.zeros((n, 3), np.uint8)
  for i in range(n):
    r = g = b = 0
    c = i
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    cmap[i] = (r, g, b)
  return cmap


def encode_label_png(label: np.ndarray) -> bytes:
  """An 8-bit palette PNG with the VOC colour map."""
  label = np.asarray(label)
  if label.ndim != 2 or label.dtype != np.uint8:
    raise ValueError(f'label must be a 2-D uint8 array, got {label.dtype} {label.shape}')
  img = Image.fromarray(label, mode='P')
  img.putpalette(voc_colormap().reshape(-1).tolist())
  buf = io.BytesIO()
  img.save(buf, format='PNG')
  return buf.getvalue()


def save_label_png(path: str, label: np.ndarray) -> None:
  """Writes a palette PNG atomically."""
  gio.atomic_write_bytes(path, encode_label_png(label))


def read_label_png(path: str) -> np.ndarray:
  """Class indices of a palette or greyscale PNG as uint8 [H, W] (never its colours)."""
  if not os.path.exists(path):
    raise UserError(f'label file not found: {path}')
  try:
    with Image.open(path) as img:
      if img.mode not in ('P', 'L'):
        raise UserError(f'{path}: label PNG must be palette or greyscale, not mode {img.mode}')
      return np.array(img, dtype=np.uint8)
  except (OSError, SyntaxError) as e:
    raise UserError(f'unreadable label file {path}: {e}') from None


def read_mask(path: str, num_classes: int, skip_bad: bool = False) -> np.ndarray:
  """A ground-truth mask, checked: values 0..num_classes (0 = background) and 255 (ignore).

  `num_classes` excludes the background (`data.num_classes`). Any other value stops with a
  UserError naming the file and the values; with `skip_bad` (`data.skip_bad`) those pixels
  become ignore, with a warning that counts them.
  """
  label = read_label_png(path)
  bad = (label > num_classes) & (label != IGNORE)
  if not bad.any():
    return label
  values, counts = np.unique(label[bad], return_counts=True)
  found = ', '.join(f'{v} ({c} px)' for v, c in zip(values.tolist(), counts.tolist()))
  if not skip_bad:
    raise UserError(f'{path}: mask values out of range 0..{num_classes} (255 = ignore; '
                    f'data.num_classes={num_classes}): {found} (set '
                    '--config.data.skip_bad=True to take them as ignore)')
  logging.warning('%s: %d pixels with mask values out of range 0..%d taken as ignore '
                  '(data.skip_bad=True): %s', path, int(counts.sum()), num_classes, found)
  return np.where(bad, np.uint8(IGNORE), label)


def colorize(label: np.ndarray) -> np.ndarray:
  """RGB uint8 picture of a label map."""
  return voc_colormap()[np.asarray(label, np.uint8)]
