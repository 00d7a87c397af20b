"""MSRC-v2 and the converted VGG16 packed small enough to travel to a GPU machine, and unpacked
there (benchmarks/msrc_device.sh runs `configs/msrc.py:full` on them).

A borrowed GPU machine may take only a few tens of MiB with the code, and MSRC-v2's BMPs are
158 MiB, the converted VGG16 53 MiB. Packed (where the data are):

  python -m benchmarks.msrc_device pack --msrc=/data/msrc_v2 \
    --weights=.cache/weights/vgg16_imagenet_onnx --out=.device_msrc

writes `Images/<name>.jpg` (JPEG quality 95 without chroma subsampling: on MSRC-v2 2 grey levels
from the BMP on average), `newsegmentations_mats/` (copied) and `vgg16_fp16/` (the weights
rounded to float16; the model casts them back to float32 when it loads them), 56 MiB in all. Unpacked (on the GPU
machine):

  python -m benchmarks.msrc_device unpack --src=.device_msrc --out=/tmp/msrc_v2

writes the MSRC-v2 layout that the reader takes (`Images/<name>.bmp` decoded from the JPEGs,
the `.mat` files); `model.pretrained` can name `<src>/vgg16_fp16` as it is. Both models of the
comparison see the same JPEG-rounded pixels.

`fixture --out=DIR` writes a small random tree in MSRC-v2's format (the smoke test of
benchmarks/msrc_device.sh --quick packs and unpacks it).
"""

import argparse
import glob
import os
import shutil
import sys

import numpy as np
from PIL import Image

JPEG_QUALITY = 95


def pack(msrc: str, weights: str, out: str) -> None:
  images = sorted(glob.glob(os.path.join(msrc, 'Images', '*.bmp')))
  mats = os.path.join(msrc, 'newsegmentations_mats')
  if not images or not os.path.isdir(mats):
    sys.exit(f'error: --msrc={msrc}: needs Images/*.bmp and newsegmentations_mats/')
  os.makedirs(os.path.join(out, 'Images'), exist_ok=True)
  for path in images:
    name = os.path.splitext(os.path.basename(path))[0]
    with Image.open(path) as img:
      img.convert('RGB').save(os.path.join(out, 'Images', name + '.jpg'), quality=JPEG_QUALITY,
                              subsampling=0)  # 4:4:4: no chroma blur at colour edges
  shutil.copytree(mats, os.path.join(out, 'newsegmentations_mats'), dirs_exist_ok=True)
  if weights:
    import jax  # pylint: disable=g-import-not-at-top
    from gwsss_jax.models import convert  # pylint: disable=g-import-not-at-top
    variables, meta = convert.load_pretrained(weights)
    half = jax.tree.map(lambda x: np.asarray(x, np.float16), variables)
    convert.save_pretrained(os.path.join(out, 'vgg16_fp16'), half, meta['normalization'],
                            meta['source'] + ' (rounded to float16)', meta['arch'])
  size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
  print(f'packed {len(images)} images{" and the weights" if weights else ""} into {out}: '
        f'{size / 2**20:.1f} MiB')


def unpack(src: str, out: str) -> None:
  images = sorted(glob.glob(os.path.join(src, 'Images', '*.jpg')))
  if not images:
    sys.exit(f'error: --src={src}: no Images/*.jpg (run `pack` first and carry its folder)')
  os.makedirs(os.path.join(out, 'Images'), exist_ok=True)
  for path in images:
    name = os.path.splitext(os.path.basename(path))[0]
    with Image.open(path) as img:
      img.convert('RGB').save(os.path.join(out, 'Images', name + '.bmp'))
  shutil.copytree(os.path.join(src, 'newsegmentations_mats'),
                  os.path.join(out, 'newsegmentations_mats'), dirs_exist_ok=True)
  print(f'unpacked {len(images)} images into {out}')


# Per category of the fixture, the MSRC classes of its images' segments (one object class each).
_FIXTURE = {1: ('grass', 'cow'), 2: ('sky', 'aeroplane'), 3: ('road', 'car'), 4: ('grass', 'dog')}


def fixture(out: str, per_category: int = 6, size=(48, 64)) -> None:
  """A small MSRC-v2 tree: per category, images of a background and an object rectangle."""
  import scipy.io  # pylint: disable=g-import-not-at-top
  from gwsss_jax.data import msrc  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  os.makedirs(os.path.join(out, 'Images'), exist_ok=True)
  os.makedirs(os.path.join(out, 'newsegmentations_mats'), exist_ok=True)
  for cat, classes in _FIXTURE.items():
    colours = rng.integers(0, 255, (len(classes), 3))
    for n in range(1, per_category + 1):
      h, w = size
      seg = np.ones((h, w), np.uint8)
      top, left = rng.integers(0, h // 2), rng.integers(0, w // 2)
      seg[top:top + h // 2, left:left + w // 2] = 2
      image = colours[seg - 1] + rng.integers(-4, 5, (h, w, 3))
      name = f'{cat}_{n}_s'
      Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
          os.path.join(out, 'Images', name + '.bmp'))
      labels = np.array([[msrc.MSRC_CLASSES.index(c) + 1 for c in classes]], np.uint8)
      scipy.io.savemat(os.path.join(out, 'newsegmentations_mats', name + '_GT.mat'),
                       {'newseg': seg, 'newlabels': labels})
  print(f'wrote {len(_FIXTURE) * per_category} MSRC-format images into {out}')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  p = sub.add_parser('pack')
  p.add_argument('--msrc', required=True)
  p.add_argument('--weights', default='', help="converted VGG16 directory ('' = none)")
  p.add_argument('--out', required=True)
  u = sub.add_parser('unpack')
  u.add_argument('--src', required=True)
  u.add_argument('--out', required=True)
  f = sub.add_parser('fixture')
  f.add_argument('--out', required=True)
  args = parser.parse_args(argv)
  if args.command == 'pack':
    pack(args.msrc, args.weights, args.out)
  elif args.command == 'unpack':
    unpack(args.src, args.out)
  else:
    fixture(args.out)


if __name__ == '__main__':
  main()
