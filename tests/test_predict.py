"""`python -m gwsss_jax.predict`: palette PNGs and overlays for a folder of the user's images."""

import os
import subprocess
import sys

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from gwsss_jax import config as config_lib
from gwsss_jax.common.errors import UserError
from gwsss_jax.data import normalization as norm_lib
from gwsss_jax.data import palette
from gwsss_jax import predict
from gwsss_jax.seg import common
from gwsss_jax.seg import inference
from gwsss_jax.train import artifact
from gwsss_jax.train import checkpoint
from gwsss_jax.train import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
  config = config_lib.base_config()
  config.data.num_classes = 4
  config.seg.model = 'deeplab_largefov_vgg16'
  config.seg.width = 0.0625
  config.seg.crop_size = 32
  config.seg.num_steps = 1
  return config


def _fake_trained_run(config, workdir):
  """A checkpoint as train_seg leaves it, with random weights (numpy: nothing to compile)."""
  module = common.build_model(config, caffe_layout=False)
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  rng = np.random.default_rng(0)
  flat = {k: (rng.normal(size=v.shape) * np.sqrt(2.0 / np.prod(v.shape[:-1])) if k[-1] == 'kernel'
              else rng.normal(size=v.shape) * 0.5).astype(np.float32)
          for k, v in traverse_util.flatten_dict(shapes['params']).items()}
  params = traverse_util.unflatten_dict(flat)
  tx, _ = common.optimizer(config, params)
  directory = common.checkpoint_dir(config, workdir)
  ckpt = checkpoint.Checkpointer(directory, asynchronous=False)
  ckpt.save(1, trainer.init_state(params, {}, tx, 0), force=True)
  ckpt.close()
  artifact.save(directory, common.model_info(config, None))
  return module, {'params': params, 'batch_stats': {}}


def test_predict_folder_round_trips_palette_pngs(tmp_path):
  config = _config()
  workdir = str(tmp_path / 'work')
  module, variables = _fake_trained_run(config, workdir)
  images_dir, out_dir = tmp_path / 'photos', str(tmp_path / 'out')
  images_dir.mkdir()
  rng = np.random.default_rng(1)
  photos = {'a': rng.integers(0, 256, (40, 56, 3), dtype=np.uint8),
            'b': rng.integers(0, 256, (48, 32, 3), dtype=np.uint8)}
  Image.fromarray(photos['a']).save(images_dir / 'a.png')
  Image.fromarray(photos['b']).save(images_dir / 'b.PNG')
  (images_dir / 'notes.txt').write_text('not an image')

  written = predict.predict_folder(config, workdir, str(images_dir), out_dir)

  assert sorted(os.path.basename(p) for p in written) == ['a.png', 'b.png']
  assert sorted(os.listdir(out_dir)) == ['a.png', 'a_overlay.jpg', 'b.png', 'b_overlay.jpg']
  # The same network on the same padded canvas, applied here without predict's file handling.
  canvas = inference.canvas_size([p.shape[:2] for p in photos.values()])
  labels_seen = set()
  for name, photo in photos.items():
    with Image.open(os.path.join(out_dir, name + '.png')) as img:
      assert img.mode == 'P'
      np.testing.assert_array_equal(np.asarray(img.getpalette()[:768], np.uint8).reshape(-1, 3),
                                    palette.voc_colormap())
      label = np.array(img)
    x = inference.pad_to(norm_lib.normalize(photo, 'imagenet_rgb'), canvas)[None]
    logits = module.apply(variables, jnp.asarray(x))
    up = inference.resize_bilinear(logits, canvas)
    want = np.asarray(jnp.argmax(up, -1))[0, :photo.shape[0], :photo.shape[1]]
    np.testing.assert_array_equal(label, want)
    labels_seen |= set(np.unique(label).tolist())
    with Image.open(os.path.join(out_dir, name + '_overlay.jpg')) as overlay:
      assert overlay.size == (photo.shape[1], photo.shape[0])
  assert labels_seen <= set(range(config.seg.num_classes))


def _photos(images_dir):
  images_dir.mkdir()
  Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(
      images_dir / 'a.png')
  (images_dir / 'notes.jpg').write_text('not an image')  # a non-image named .jpg
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images_dir / 'c.jpg')
  (images_dir / 'cut.jpg').write_bytes((images_dir / 'c.jpg').read_bytes()[:40])  # truncated


def test_non_images_named_jpg_are_skipped_with_a_warning_and_a_count(tmp_path, capsys):
  config = _config()
  workdir = str(tmp_path / 'work')
  _fake_trained_run(config, workdir)
  _photos(tmp_path / 'photos')
  written = predict.predict_folder(config, workdir, str(tmp_path / 'photos'),
                                   str(tmp_path / 'out'))
  assert sorted(os.path.basename(p) for p in written) == ['a.png', 'c.png']
  err = capsys.readouterr().err
  assert 'notes.jpg' in err and 'cut.jpg' in err
  assert 'skipped 2 of 4 files' in err
  with pytest.raises(UserError, match='cut.jpg'):
    predict.predict_folder(config, workdir, str(tmp_path / 'photos'), str(tmp_path / 'out2'),
                           strict=True)
  assert not os.path.exists(tmp_path / 'out2')


def test_prediction_reads_parameters_only(tmp_path):
  # Trained with a head warm-up (its optimizer state has another structure); predicted with
  # the defaults, which only the training keys distinguish.
  trained = _config()
  trained.seg.num_steps, trained.seg.head_warmup_steps = 10, 5
  workdir = str(tmp_path / 'work')
  module, variables = _fake_trained_run(trained, workdir)
  _photos(tmp_path / 'photos')
  written = predict.predict_folder(_config(), workdir, str(tmp_path / 'photos'),
                                   str(tmp_path / 'out'))
  assert len(written) == 2
  got_module, got, record = artifact.load(common.checkpoint_dir(trained, workdir))
  assert got_module == module and record['step'] == 1
  for x, y in zip(jax.tree.leaves(got['params']), jax.tree.leaves(variables['params'])):
    np.testing.assert_array_equal(x, y)


def test_overlay_keeps_background_and_blends_objects():
  image = np.full((2, 2, 3), 100, np.uint8)
  label = np.array([[0, 1], [255, 2]], np.uint8)
  out = predict.overlay(image, label)
  cmap = palette.voc_colormap()
  np.testing.assert_array_equal(out[0, 0], image[0, 0])
  np.testing.assert_array_equal(out[1, 0], image[1, 0])
  np.testing.assert_array_equal(out[0, 1], np.round(0.5 * 100 + 0.5 * cmap[1].astype(float)))


def test_no_checkpoint_is_a_clear_error(tmp_path):
  (tmp_path / 'photos').mkdir()
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'photos' / 'x.jpg')
  with pytest.raises(UserError, match='train_seg'):
    predict.predict_folder(_config(), str(tmp_path), str(tmp_path / 'photos'),
                           str(tmp_path / 'out'))


def test_command_line_reports_a_missing_folder(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'gwsss_jax.predict', f'--config={REPO}/configs/demo.py',
       f'--workdir={tmp_path}', f'--images={tmp_path}/nowhere', f'--out={tmp_path}/out'],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO))
  assert result.returncode == 2, result.stderr
  assert 'nowhere' in result.stderr and 'not found' in result.stderr
