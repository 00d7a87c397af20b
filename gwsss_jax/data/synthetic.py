"""The built-in dataset: a small weak-supervision problem in the PASCAL VOC 2012 layout.

  python -m gwsss_jax.data.synthetic --out DIR [--seed S --num_train N --num_val M --size PX]

Every object has a small class-discriminative part (a "head": class-specific shape, colour and
texture) attached to a larger "body" whose look is drawn from one distribution shared by all
classes. Image-level labels are enough to find the heads, but the body, most of every object,
carries no class evidence, so a single-image CAM covers mostly the head: the failure mode that
group-wise mining and OAA accumulation address. Images hold 1 to 3 objects of 1 to 3 classes with
co-occurring class pairs (like person+horse), on textured, cluttered backgrounds that also hold
headless bodies (background) and shapes in the heads' colours. Ground truth has a VOC-style
ignore band (255) on object borders; the saliency maps are blurred, miss parts of some objects and
fire on some clutter, as real saliency detectors do.

The output is a pure function of the parameters: each image draws from its own
`np.random.default_rng((seed, split, index))`, so it does not depend on how many images are
generated, and `ensure` can resume an interrupted generation image by image.
"""

import argparse
import colorsys
import json
import os
import shutil
import sys

import cv2
import numpy as np

from gwsss_jax.common import io as gio
from gwsss_jax.common.errors import UserError
from gwsss_jax.data import palette

VERSION = 1
MANIFEST = 'synthetic.json'
IGNORE = palette.IGNORE
# Class names say what the discriminative part looks like; pairs (0, 1), (2, 3), ... co-occur.
CLASS_NAMES = ('star', 'ring', 'cross', 'diamond', 'triangle', 'checker', 'crescent', 'dots')
MIN_CLASSES, MAX_CLASSES = 3, len(CLASS_NAMES)
SPLITS = ('train', 'val')
JPEG_QUALITY = 90
_NUM_CLASSES_PER_IMAGE_P = (0.5, 0.35, 0.15)  # 1, 2 or 3 classes
_PAIR_P = 0.6            # a multi-class image contains a co-occurring pair
_HEADLESS_BODY_P = 0.2   # a body without a head in the background (label 0)
_SAL_MISS_P = 0.35       # saliency misses part of an object's body
_SAL_CLUTTER_P = 0.2     # saliency fires on a clutter shape


def _hsv(h, s, v) -> np.ndarray:
  return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32)


def _smooth_noise(rng, size: int, cells: int) -> np.ndarray:
  """Low-frequency noise in [0, 1], [size, size] float32."""
  grid = rng.random((cells, cells)).astype(np.float32)
  return np.clip(cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)


def _local(xx, yy, cx, cy, angle, scale_u, scale_v):
  """Pixel coordinates in a frame centred at (cx, cy), rotated by `angle`, scaled per axis."""
  dx, dy = xx - np.float32(cx), yy - np.float32(cy)
  c, s = np.float32(np.cos(angle) / scale_u), np.float32(np.sin(angle) / scale_u)
  c2, s2 = np.float32(np.cos(angle) / scale_v), np.float32(np.sin(angle) / scale_v)
  return dx * c + dy * s, dy * c2 - dx * s2


def _head_shape(cls: int, p, q):
  """(mask, dark) of class `cls`'s discriminative part in unit coordinates (radius 1)."""
  rho = np.sqrt(p * p + q * q)
  phi = np.arctan2(q, p)
  if cls == 0:    # five-pointed star with a dark centre
    mask = rho < 0.45 + 0.55 * np.abs(np.cos(2.5 * phi)) ** 2
    dark = rho < 0.22
  elif cls == 1:  # ring
    mask = (rho < 1.0) & (rho > 0.5)
    dark = np.abs(rho - 0.75) < 0.06
  elif cls == 2:  # plus sign
    mask = ((np.abs(p) < 0.34) & (np.abs(q) < 1.0)) | ((np.abs(q) < 0.34) & (np.abs(p) < 1.0))
    dark = (np.abs(p) < 0.12) & (np.abs(q) < 0.12)
  elif cls == 3:  # striped diamond
    mask = np.abs(p) + np.abs(q) < 1.0
    dark = np.sin(p * 3.0 * np.pi) > 0.3
  elif cls == 4:  # triangle with a dark rim
    dist = np.max(np.stack([p * np.cos(a) + q * np.sin(a)
                            for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3,
                                      np.pi / 2 + 4 * np.pi / 3)]), axis=0)
    mask = dist < 0.55
    dark = dist > 0.4
  elif cls == 5:  # checkerboard square
    mask = (np.abs(p) < 0.8) & (np.abs(q) < 0.8)
    dark = (np.floor(p * 2.5) + np.floor(q * 2.5)) % 2 == 0
  elif cls == 6:  # crescent
    mask = (rho < 1.0) & ((p - 0.45) ** 2 + q ** 2 > 0.7 ** 2)
    dark = rho > 0.85
  else:           # disc with dots
    mask = rho < 1.0
    dark = ((p * 2.5) % 1 - 0.5) ** 2 + ((q * 2.5) % 1 - 0.5) ** 2 < 0.07
  return mask, dark


def _body_mask(rng, xx, yy, cx, cy, angle, a, b):
  """A wobbly ellipse, and its (u, v) frame for the texture."""
  u, v = _local(xx, yy, cx, cy, angle, a, b)
  rho, phi = np.sqrt(u * u + v * v), np.arctan2(v, u)
  wobble = 1.0 + sum(np.float32(rng.uniform(0.0, 0.07)) * np.cos(k * phi + np.float32(
      rng.uniform(0, 2 * np.pi))) for k in (2, 3, 4))
  return rho < wobble, (u, v)


def _body_rgb(rng, uv, a, b, size: int):
  """A body's colours, drawn from the one distribution that all classes share."""
  u, v = uv
  base = _hsv(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.35, 0.75))
  kind = rng.integers(3)
  if kind == 0:    # stripes across the body
    tex = 0.8 + 0.2 * np.sign(np.sin(u * np.float32(a / rng.uniform(2.0, 4.0))))
  elif kind == 1:  # mottled
    tex = 0.7 + 0.5 * _smooth_noise(rng, size, int(rng.integers(6, 12)))
  else:            # spots
    tex = 1.0 - 0.3 * ((np.sin(u * np.float32(a / 2.5)) * np.sin(v * np.float32(b / 2.5))) > 0.5)
  shade = 1.0 - 0.2 * np.clip(v, -1, 1)
  return base[None, None, :] * (tex * shade)[..., None]


def _clutter(rng, xx, yy, size: int):
  """(mask, rgb) of a background shape: rectangle, ellipse, bar or polygon in any colour."""
  cx, cy = rng.uniform(0, size, 2)
  angle = rng.uniform(0, np.pi)
  r = rng.uniform(0.05, 0.2) * size
  kind = rng.integers(4)
  u, v = _local(xx, yy, cx, cy, angle, r, r)
  if kind == 0:
    mask = (np.abs(u) < 1.0) & (np.abs(v) < rng.uniform(0.3, 1.0))
  elif kind == 1:
    mask = u * u + (v / rng.uniform(0.3, 1.0)) ** 2 < 1.0
  elif kind == 2:
    mask = (np.abs(u) < 2.5) & (np.abs(v) < rng.uniform(0.08, 0.2))
  else:
    n = int(rng.integers(3, 7))
    pts = np.stack([cx + r * rng.uniform(0.5, 1.2, n) * np.cos(np.sort(rng.uniform(0, 2 * np.pi, n))),
                    cy + r * rng.uniform(0.5, 1.2, n) * np.sin(np.sort(rng.uniform(0, 2 * np.pi, n)))],
                   axis=1)
    poly = np.zeros((size, size), np.uint8)
    cv2.fillPoly(poly, [np.round(pts * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    mask = poly.astype(bool)
  rgb = _hsv(rng.random(), rng.uniform(0.0, 0.7), rng.uniform(0.2, 0.9))
  tone = 1.0 + 0.15 * np.clip(v, -2, 2)
  return mask, rgb[None, None, :] * tone[..., None]


def _background(rng, xx, yy, size: int) -> np.ndarray:
  """Textured background: tinted low-frequency noise, often a periodic pattern, fine grain."""
  base = _hsv(rng.random(), rng.uniform(0.1, 0.5), rng.uniform(0.3, 0.8))
  img = base[None, None, :] * np.stack(
      [0.7 + 0.6 * _smooth_noise(rng, size, int(rng.integers(3, 8))) for _ in range(3)], -1)
  if rng.random() < 0.6:
    u, _ = _local(xx, yy, 0.0, 0.0, rng.uniform(0, np.pi), rng.uniform(3.0, 10.0), 1.0)
    img *= (0.85 + 0.15 * np.sin(u))[..., None]
  return img + rng.normal(0.0, 0.03, img.shape).astype(np.float32)


def _sample_classes(rng, num_classes: int) -> list:
  """1 to 3 distinct classes; a multi-class image usually holds a co-occurring pair."""
  k = 1 + int(rng.choice(3, p=_NUM_CLASSES_PER_IMAGE_P))
  num_pairs = num_classes // 2
  if k > 1 and rng.random() < _PAIR_P:
    first = 2 * int(rng.integers(num_pairs))
    chosen = [first, first + 1]
    rest = [c for c in range(num_classes) if c not in chosen]
    chosen += [int(c) for c in rng.choice(rest, k - 2, replace=False)]
  else:
    chosen = [int(c) for c in rng.choice(num_classes, k, replace=False)]
  return chosen


def render(rng: np.random.Generator, size: int, num_classes: int):
  """One example: (image [S, S, 3] uint8 RGB, label [S, S] uint8, saliency [S, S] uint8)."""
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
  img = _background(rng, xx, yy, size)
  sal = np.zeros((size, size), np.float32)
  for _ in range(int(rng.integers(3, 9))):
    mask, rgb = _clutter(rng, xx, yy, size)
    img[mask] = rgb[mask]
    if rng.random() < _SAL_CLUTTER_P:
      sal[mask] = rng.uniform(0.4, 0.9)
  if rng.random() < _HEADLESS_BODY_P:
    a = rng.uniform(0.12, 0.2) * size
    b = a * rng.uniform(0.5, 0.8)
    mask, uv = _body_mask(rng, xx, yy, *rng.uniform(0.2, 0.8, 2) * size,
                          rng.uniform(0, 2 * np.pi), a, b)
    img[mask] = _body_rgb(rng, uv, a, b, size)[mask]
    sal[mask] = np.maximum(sal[mask], rng.uniform(0.3, 0.9))

  classes = _sample_classes(rng, num_classes)
  num_objects = min(3, len(classes) + int(rng.integers(2)))
  classes += [classes[int(rng.integers(len(classes)))] for _ in range(num_objects - len(classes))]
  scale = {1: (0.2, 0.3), 2: (0.16, 0.23), 3: (0.14, 0.19)}[num_objects]
  for _ in range(100):  # until every head lies inside the image and stays visible
    objects = []
    owner = np.full((size, size), -1, np.int32)
    for i, cls in enumerate(classes):
      while True:
        a = rng.uniform(*scale) * size
        r = a * rng.uniform(0.42, 0.55)
        angle = rng.uniform(0, 2 * np.pi)
        cx, cy = rng.uniform(0.15, 0.85, 2) * size
        hx = cx + (0.8 * a + 0.6 * r) * np.cos(angle)
        hy = cy + (0.8 * a + 0.6 * r) * np.sin(angle)
        if r <= hx <= size - r and r <= hy <= size - r:
          break
      b = a * rng.uniform(0.5, 0.8)
      body, uv = _body_mask(rng, xx, yy, cx, cy, angle, a, b)
      head, dark = _head_shape(cls, *_local(xx, yy, hx, hy, angle + rng.uniform(-0.5, 0.5), r, r))
      objects.append((cls, body, uv, a, b, head, dark))
      owner[body | head] = i
    if all(((owner == i) & head).sum() >= 0.8 * head.sum()
           and (owner == i).sum() >= 0.5 * (body | head).sum()
           for i, (_, body, _, _, _, head, _) in enumerate(objects)):
      break  # else the last layout stays: the label lists are read off the masks anyway

  label = np.zeros((size, size), np.uint8)
  for cls, body, uv, a, b, head, dark in objects:
    img[body] = _body_rgb(rng, uv, a, b, size)[body]
    head_rgb = _hsv(cls / num_classes + rng.uniform(-0.02, 0.02), rng.uniform(0.75, 1.0),
                    rng.uniform(0.75, 1.0))
    img[head] = head_rgb
    img[head & dark] = head_rgb * 0.4
    obj = body | head
    label[obj] = cls + 1
    level = rng.uniform(0.8, 1.0)
    if rng.random() < _SAL_MISS_P:  # a missed part of the body
      ys, xs = np.nonzero(body)
      j = int(rng.integers(len(ys)))
      radius = np.sqrt(body.sum()) * rng.uniform(0.35, 0.6)
      level = np.where(np.hypot(xx - xs[j], yy - ys[j]) < radius, level * rng.uniform(0.05, 0.4),
                       level)[obj]
    sal[obj] = level

  gain, offset = rng.uniform(0.8, 1.2), rng.uniform(-0.08, 0.08)
  img = cv2.GaussianBlur(img * gain + offset, (3, 3), 0.6)
  image = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)

  # VOC-style ignore band: pixels whose neighbourhood holds more than one label.
  k = np.ones((3, 3) if size < 192 else (5, 5), np.uint8)
  label[cv2.dilate(label, k) != cv2.erode(label, k)] = IGNORE

  sal = cv2.GaussianBlur(sal, (0, 0), size / 40.0)
  sal += 0.12 * (_smooth_noise(rng, size, 6) - 0.5)
  saliency = np.clip(np.round(sal * 255.0), 0, 255).astype(np.uint8)
  return image, label, saliency


def _names(num_train: int, num_val: int) -> dict:
  return {'train': [f'syn_{i:06d}' for i in range(num_train)],
          'val': [f'syn_{num_train + i:06d}' for i in range(num_val)]}


def _example_paths(root: str, name: str) -> tuple:
  return (os.path.join(root, 'JPEGImages', name + '.jpg'),
          os.path.join(root, 'SegmentationClass', name + '.png'),
          os.path.join(root, 'SalMaps', name + '.png'))


def _write(path: str, data: bytes) -> None:
  """Atomic (rename) without fsync: the whole directory is committed by one rename later."""
  with gio.atomic_path(path) as tmp:
    with open(tmp, 'wb') as f:
      f.write(data)


def _write_example(root: str, name: str, image, label, saliency) -> None:
  image_path, label_path, sal_path = _example_paths(root, name)
  ok_jpg, jpg = cv2.imencode('.jpg', image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
  ok_png, png = cv2.imencode('.png', saliency)
  if not (ok_jpg and ok_png):
    raise RuntimeError(f'OpenCV could not encode {name}')
  _write(image_path, jpg.tobytes())
  _write(sal_path, png.tobytes())
  _write(label_path, palette.encode_label_png(label))  # last: marks the example complete


def _read_done(root: str, name: str):
  """The label map of an example an interrupted run completed, else None."""
  image_path, label_path, sal_path = _example_paths(root, name)
  if not all(os.path.exists(p) for p in (image_path, label_path, sal_path)):
    return None
  try:
    return palette.read_label_png(label_path)
  except UserError:  # truncated by a crash: generate it again
    return None


def _labels_of(label: np.ndarray) -> list:
  return [int(c) - 1 for c in np.unique(label) if 0 < c < IGNORE]


def _params(seed, num_train, num_val, size, num_classes) -> dict:
  return dict(generator='gwsss_jax.data.synthetic', version=VERSION, seed=int(seed),
              num_train=int(num_train), num_val=int(num_val), size=int(size),
              num_classes=int(num_classes))


def _read_manifest(root: str):
  path = os.path.join(root, MANIFEST)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    try:
      return json.load(f)
    except ValueError as e:
      raise UserError(f'{path}: not a valid manifest ({e}); delete the directory') from None


def _check_params(params: dict) -> None:
  if params['num_train'] < 1 or params['num_val'] < 1:
    raise UserError(f'synthetic dataset: num_train={params["num_train"]} and '
                    f'num_val={params["num_val"]} must be >= 1')
  if params['size'] < 48:
    raise UserError(f'synthetic dataset: size={params["size"]} must be >= 48 pixels')
  if not MIN_CLASSES <= params['num_classes'] <= MAX_CLASSES:
    raise UserError(f'synthetic dataset: num_classes={params["num_classes"]} must lie in '
                    f'[{MIN_CLASSES}, {MAX_CLASSES}]')


def _generate(tmp: str, params: dict) -> None:
  """Fills `tmp`, skipping examples a previous, interrupted call already wrote."""
  names = _names(params['num_train'], params['num_val'])
  for split_id, split in enumerate(SPLITS):
    lines = []
    for i, name in enumerate(names[split]):
      label = _read_done(tmp, name)
      if label is None:
        rng = np.random.default_rng((params['seed'], split_id, i))
        image, label, saliency = render(rng, params['size'], params['num_classes'])
        _write_example(tmp, name, image, label, saliency)
      lines.append(' '.join([name] + [str(c) for c in _labels_of(label)]))
    seg = os.path.join(tmp, 'ImageSets', 'Segmentation')
    gio.atomic_write_text(os.path.join(seg, f'{split}.txt'), '\n'.join(names[split]) + '\n')
    gio.atomic_write_text(os.path.join(seg, f'{split}_cls.txt'), '\n'.join(lines) + '\n')
  gio.atomic_write_text(os.path.join(tmp, 'class_names.txt'),
                        '\n'.join(CLASS_NAMES[:params['num_classes']]) + '\n')


def ensure(root: str, seed: int = 0, num_train: int = 600, num_val: int = 200, size: int = 128,
           num_classes: int = 6) -> str:
  """Generates the dataset into `root` unless it is already there; returns `root`.

  Generation goes to `<root>.partial` and is renamed onto `root` when complete, so an
  interrupted run is never taken for a dataset; the next call with the same parameters
  continues it. A `root` made with other parameters, or holding other files, is an error
  rather than something to overwrite.
  """
  root = os.path.normpath(os.path.abspath(root))
  params = _params(seed, num_train, num_val, size, num_classes)
  _check_params(params)
  existing = _read_manifest(root)
  if existing == params:
    return root
  if existing is not None:
    raise UserError(f'{root}: holds a built-in dataset generated with other parameters '
                    f'({json.dumps(existing, sort_keys=True)}); delete it or choose another '
                    f'directory for {json.dumps(params, sort_keys=True)}')
  if os.path.exists(root) and not (os.path.isdir(root) and not os.listdir(root)):
    raise UserError(f'{root}: exists and is not a built-in dataset (no {MANIFEST}); '
                    'delete it or choose another directory')
  tmp = root + '.partial'
  if os.path.isdir(tmp) and _read_manifest(tmp) != params:
    shutil.rmtree(tmp)
  gio.atomic_write_text(os.path.join(tmp, MANIFEST), json.dumps(params, indent=2) + '\n')
  _generate(tmp, params)
  if os.path.isdir(root):
    os.rmdir(root)  # empty, checked above
  os.replace(tmp, root)
  return root


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      prog='python -m gwsss_jax.data.synthetic',
      description='Writes the built-in dataset in the PASCAL VOC 2012 layout.')
  parser.add_argument('--out', required=True,
                      help='output directory (created; must not hold other files)')
  parser.add_argument('--seed', type=int, default=0,
                      help='random seed; the same seed gives byte-identical files')
  parser.add_argument('--num_train', type=int, default=600, help='training images')
  parser.add_argument('--num_val', type=int, default=200, help='validation images')
  parser.add_argument('--size', type=int, default=128, help='image side in pixels')
  parser.add_argument('--num_classes', type=int, default=6,
                      help=f'object classes, {MIN_CLASSES} to {MAX_CLASSES}')
  args = parser.parse_args(argv)
  try:
    root = ensure(args.out, args.seed, args.num_train, args.num_val, args.size, args.num_classes)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(f'{root}: {args.num_train} train + {args.num_val} val images, '
        f'{args.num_classes} classes, {args.size}x{args.size}')


if __name__ == '__main__':
  main()
