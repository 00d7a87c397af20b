"""Segments a folder of your own images with the trained DeepLab of a workdir.

  python -m gwsss_jax.predict --config=configs/voc.py --workdir=runs/voc \\
      --images=my_photos --out=my_photos_seg

For every `*.jpg`, `*.jpeg` or `*.png` in `--images` (not recursive) it writes `<out>/<stem>.png`,
a palette PNG of class indices (VOC colour map: open it in any viewer; read the indices with
PIL `np.array(Image.open(path))`), and `<out>/<stem>_overlay.jpg`, the colours blended over the
photo. A file that is not a readable image is skipped with a warning and counted (`--strict`
stops instead). The config selects the run (`seg.oracle`) and the inference (`seg.eval_scales`,
`seg.eval_flip`); the run's own record (`gwsss_jax.train.artifact`) supplies the network and the
input normalisation, and only the parameters are read.
"""

import io
import os
import sys

import jax
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags
from PIL import Image

from gwsss_jax import config as config_lib
from gwsss_jax.common import cli
from gwsss_jax.common import io as gio
from gwsss_jax.common import xla_flags
from gwsss_jax.common.errors import UserError
from gwsss_jax.data import core
from gwsss_jax.data import normalization as norm_lib
from gwsss_jax.data import palette
from gwsss_jax.seg import common
from gwsss_jax.seg import inference
from gwsss_jax.train import artifact

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
OVERLAY_ALPHA = 0.5


def list_images(directory: str) -> list:
  if not os.path.isdir(directory):
    raise UserError(f'--images={directory!r}: directory not found')
  paths = sorted(os.path.join(directory, f) for f in os.listdir(directory)
                 if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith('.'))
  if not paths:
    raise UserError(f'--images={directory!r}: no {", ".join(IMAGE_SUFFIXES)} files')
  return paths


read_rgb = core.read_rgb


def overlay(image: np.ndarray, label: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
  """The label colours blended over the image; ignore/background pixels keep the photo."""
  colours = palette.colorize(label).astype(np.float32)
  blend = (1 - alpha) * image.astype(np.float32) + alpha * colours
  keep = (label == 0) | (label == palette.IGNORE)
  return np.where(keep[..., None], image, np.round(blend)).astype(np.uint8)


def _encode_jpeg(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='JPEG', quality=90)
  return buf.getvalue()


def predict_folder(config, workdir: str, images_dir: str, out_dir: str,
                   strict: bool = False) -> list:
  """Writes the label PNG and overlay of every image; returns the label PNG paths.

  A file that is not a readable image (a text file named .jpg, a truncated download) is
  skipped with a warning and counted, or stops the run before anything is written when
  `strict`.
  """
  config_lib.check_renamed_keys(config)
  if config.seg.crf:
    raise UserError('config.seg.crf=True: the predict command does not apply the dense CRF '
                    '(eval_seg does); set seg.crf=False')
  paths = list_images(images_dir)
  pictures, skipped = [], []
  for path in paths:
    try:
      pictures.append((path, read_rgb(path)))
    except UserError as e:
      if strict:
        raise UserError(f'{e} (without --strict such files are skipped)') from None
      skipped.append(path)
      print(f'warning: skipping {e}', file=sys.stderr, flush=True)
  if skipped:
    print(f'warning: skipped {len(skipped)} of {len(paths)} files in {images_dir} that are not '
          'readable images (--strict stops instead)', file=sys.stderr, flush=True)
  if not pictures:
    raise UserError(f'--images={images_dir!r}: none of its {len(paths)} files is a readable '
                    'image')
  module, variables, info = artifact.load(common.checkpoint_dir(config, workdir),
                                          artifact.SEGMENTER)
  predict = inference.make_predict_fn(module, tuple(config.seg.eval_scales),
                                      config.seg.eval_flip)
  canvas = inference.canvas_size([p.shape[:2] for _, p in pictures])
  variables = jax.device_put(variables, jax.local_devices()[0])
  written = []
  for path, picture in pictures:
    h, w = picture.shape[:2]
    x = inference.pad_to(norm_lib.normalize(picture, info['normalization']), canvas)
    label = np.asarray(predict(variables, x[None]))[0, :h, :w]
    stem = os.path.splitext(os.path.basename(path))[0]
    out = os.path.join(out_dir, stem + '.png')
    palette.save_label_png(out, label)
    gio.atomic_write_bytes(os.path.join(out_dir, stem + '_overlay.jpg'),
                           _encode_jpeg(overlay(picture, label)))
    written.append(out)
  return written


FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file the model was trained with.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Workdir holding the trained segmentation checkpoints.')
flags.DEFINE_string('images', None, 'Folder of .jpg/.jpeg/.png images to segment.')
flags.DEFINE_string('out', None, 'Output folder for label PNGs and overlays.')
flags.DEFINE_bool('strict', False, 'Stop at a file that is not a readable image instead of '
                  'skipping it with a warning.')
flags.mark_flags_as_required(['config', 'workdir', 'images', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  xla_flags.configure_cpu()
  written = predict_folder(FLAGS.config, FLAGS.workdir, FLAGS.images, FLAGS.out,
                           strict=FLAGS.strict)
  print(f'wrote {len(written)} label PNGs and overlays to {FLAGS.out}')


if __name__ == '__main__':
  cli.run(main, flags_parser=cli.parse_config_flags)
