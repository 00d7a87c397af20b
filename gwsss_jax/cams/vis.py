"""Picture grids of CAMs and pseudo labels (people judge CAMs by looking at them).

One grid per image: the first row holds the input, the ground truth and the pseudo label; then
one row per class of the image with the CAM of each readout (graph, intermediate, ensemble where
exported) overlaid on the input with the JET colour map. Every tile has a title strip.
"""

import cv2
import numpy as np

from gwsss_jax.common import io as gio
from gwsss_jax.data import palette

TILE = 192        # longer side of a tile, pixels
TITLE_H = 18      # title strip height
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_BG = (40, 40, 40)


def overlay(image, cam, alpha: float = 0.5) -> np.ndarray:
  """RGB uint8: `image` blended with the JET colouring of `cam` ([H, W] in 0..1)."""
  heat = cv2.applyColorMap(np.rint(np.clip(cam, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
  heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
  return np.rint((1 - alpha) * image.astype(np.float32) + alpha * heat).astype(np.uint8)


def tile(picture, title: str, interpolation=cv2.INTER_LINEAR) -> np.ndarray:
  """The picture fitted into a TILE x TILE box (aspect kept, padded) under a title strip."""
  out = np.full((TITLE_H + TILE, TILE, 3), _BG, np.uint8)
  if picture is not None:
    h, w = picture.shape[:2]
    f = TILE / max(h, w)
    nh, nw = max(1, int(round(h * f))), max(1, int(round(w * f)))
    small = cv2.resize(picture, (nw, nh), interpolation=interpolation)
    y0, x0 = TITLE_H + (TILE - nh) // 2, (TILE - nw) // 2
    out[y0:y0 + nh, x0:x0 + nw] = small
  scale = 0.42
  while scale > 0.25 and cv2.getTextSize(title, _FONT, scale, 1)[0][0] > TILE - 6:
    scale -= 0.02
  cv2.putText(out, title, (3, TITLE_H - 5), _FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
  return out


def make_grid(image, gt, pseudo_label, cams: dict, keys, class_names) -> np.ndarray:
  """The grid of one image, RGB uint8.

  Args:
    image: uint8 [H, W, 3] RGB.
    gt: uint8 [H, W] ground truth (0..L, 255) or None.
    pseudo_label: uint8 [H, W] or None.
    cams: {readout: [n, H, W] maps in 0..1}, the same classes `keys` in each.
    keys: [n] class indices (0..L-1).
    class_names: names of the L classes (background excluded).
  """
  nearest = cv2.INTER_NEAREST
  first = [tile(image, 'input'),
           tile(None if gt is None else palette.colorize(gt), 'ground truth', nearest),
           tile(None if pseudo_label is None else palette.colorize(pseudo_label),
                'pseudo label', nearest)]
  rows = [first]
  for k, c in enumerate(np.asarray(keys).reshape(-1)):
    rows.append([tile(overlay(image, m[k]), f'{r}: {class_names[int(c)]}')
                 for r, m in cams.items()])
  width = max(len(r) for r in rows)
  blank = tile(None, '')
  lines = [np.concatenate(r + [blank] * (width - len(r)), axis=1) for r in rows]
  return np.concatenate(lines, axis=0)


def save_rgb_png(path: str, rgb) -> None:
  ok, buf = cv2.imencode('.png', cv2.cvtColor(np.asarray(rgb, np.uint8), cv2.COLOR_RGB2BGR))
  if not ok:
    raise OSError(f'PNG encoding failed: {path}')
  gio.atomic_write_bytes(path, buf.tobytes())
