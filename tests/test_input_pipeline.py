"""tf.data pipelines on a tiny VOC-layout tree: shapes, ranges, determinism, resume, shards."""

import os

import numpy as np
from PIL import Image
import pytest

from gwsss_jax import config as config_lib
from gwsss_jax.common.errors import UserError
from gwsss_jax.data import input_pipeline as ip
from gwsss_jax.data import normalization as norm_lib
from gwsss_jax.data import palette
from gwsss_jax.data import sampler
from gwsss_jax.data import voc
import test_sampler
import test_voc


@pytest.fixture(scope='module')
def voc_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('voc'))
  test_voc.write_voc(root, num_images=18, size=(36, 44))
  return root


def small_setup(root, seed, loader='tf'):
  """(config, train split, val split) of a small VOC tree at `root`: 24-pixel crops of a
  28-pixel shorter side, DeepLab crops of 40 (tests/test_np_loader.py uses it too)."""
  config = config_lib.base_config()
  config.data.loader = loader
  config.data.root = root
  config.data.num_classes = 4
  config.data.train_split = 'train'
  config.data.crop_size = 24
  config.data.resize = 28
  config.seg.crop_size = 40
  config.seed = seed
  return config, voc.load(config.data, 'train'), voc.load(config.data, 'val')


# Every test of the iterators runs with both loaders: the properties are the same.
@pytest.fixture(scope='module', params=config_lib.LOADERS)
def setup(request, voc_root):
  return small_setup(voc_root, seed=3, loader=request.param)


def _collect(it):
  return list(it)


def test_normalize_matches_definitions():
  x = np.array([[[0, 128, 255]]], np.uint8)
  rgb = norm_lib.normalize(x, 'imagenet_rgb')
  np.testing.assert_allclose(rgb[0, 0], (np.array([0, 128, 255]) / 255.0 - [0.485, 0.456, 0.406])
                             / [0.229, 0.224, 0.225], rtol=1e-6)
  # Keras/Caffe VGG16's ILSVRC BGR mean (keras.applications.imagenet_utils, 'caffe' mode).
  bgr = norm_lib.normalize(x, 'caffe_bgr')
  np.testing.assert_allclose(bgr[0, 0], [255 - 103.939, 128 - 116.779, 0 - 123.68], rtol=1e-6)
  # A spec stored with weights is applied as given: DeepLab's Caffe mean.
  deeplab = {'name': 'caffe_bgr', 'channel_order': 'bgr', 'mean': (104.008, 116.669, 122.675),
             'std': (1.0, 1.0, 1.0)}
  np.testing.assert_allclose(norm_lib.normalize(x, deeplab)[0, 0],
                             [255 - 104.008, 128 - 116.669, 0 - 122.675], rtol=1e-6)
  with pytest.raises(UserError, match='auto'):
    norm_lib.normalize(x, 'auto')
  with pytest.raises(UserError, match='channel_order'):
    norm_lib.normalize(x, {'mean': (0, 0, 0)})


def test_pipeline_applies_a_stored_spec_like_its_numpy_twin(setup):
  config, _, val = setup
  spec = {'name': 'caffe_bgr', 'channel_order': 'bgr', 'mean': (100.0, 110.0, 120.0),
          'std': (2.0, 2.0, 2.0)}
  b = next(ip.eval_iterator(val, config, batch_size=1, normalization=spec))
  pixels = np.asarray(Image.open(val.examples[int(b['index'][0])].image_path).convert('RGB'),
                      np.float32)
  h, w = (int(v) for v in b['hw'][0])
  want = (pixels[..., ::-1] - np.array([100.0, 110.0, 120.0])) / 2.0
  np.testing.assert_allclose(b['images'][0, :h, :w], want, atol=1e-4)


def test_train_batches_shapes_values_and_resume(setup):
  config, train, _ = setup
  kw = dict(num_nodes=3, global_batch=4, epoch=1, normalization='imagenet_rgb',
            process_index=0, process_count=1)
  batches = _collect(ip.train_iterator(train, config, **kw))
  assert len(batches) == ip.steps_per_epoch(len(train), 4) == 3
  b = batches[0]
  assert b['images'].shape == (4, 3, 24, 24, 3) and b['images'].dtype == np.float32
  assert b['labels'].shape == (4, 3, 4) and b['labels'].dtype == np.float32
  assert b['adjacency'].shape == (4, 3, 3) and b['index'].dtype == np.int32
  lo = (0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  hi = (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  assert (b['images'] >= lo - 1e-4).all() and (b['images'] <= hi + 1e-4).all()
  assert b['images'].std() > 0.1
  # Labels and adjacency follow the dataset and the sampler.
  groups, adjacency, order = ip.epoch_groups(train, config, num_nodes=3, epoch=1)
  matrix = train.label_matrix()
  for n, batch in enumerate(batches):
    rows = order[n * 4:(n + 1) * 4]
    np.testing.assert_array_equal(batch['index'], groups[rows])
    np.testing.assert_array_equal(batch['labels'], matrix[groups[rows]])
    np.testing.assert_array_equal(batch['adjacency'], adjacency[rows])
  # Determinism and resume: bitwise the same batches.
  again = _collect(ip.train_iterator(train, config, **kw))
  resumed = _collect(ip.train_iterator(train, config, start_batch=2, **kw))
  assert len(resumed) == 1
  for key in batches[0]:
    np.testing.assert_array_equal(batches[1][key], again[1][key])
    np.testing.assert_array_equal(batches[2][key], resumed[0][key])
  other_epoch = next(ip.train_iterator(train, config, **{**kw, 'epoch': 2}))
  assert not np.array_equal(other_epoch['images'], b['images'])


def test_train_images_are_the_decoded_pixels_without_augmentation(setup):
  config, train, _ = setup
  config = config.copy_and_resolve_references()
  config.data.color_jitter = (0.0, 0.0, 0.0, 0.0)
  config.data.flip = False
  config.data.resize = 36  # the images' shorter side: no resize
  b = next(ip.train_iterator(train, config, num_nodes=1, global_batch=2, epoch=0,
                             normalization='caffe_bgr', process_index=0, process_count=1))
  for img, i in zip(b['images'][:, 0], b['index'][:, 0]):
    pixels = np.asarray(Image.open(train.examples[i].image_path).convert('RGB'), np.float32)
    ref = norm_lib.normalize(pixels, 'caffe_bgr')
    # The crop is a window of the image: find it by exhaustive search.
    errs = [np.abs(ref[t:t + 24, l:l + 24] - img).mean() for t in range(13) for l in range(21)]
    assert min(errs) < 1e-3, min(errs)


def test_train_boxes_and_flips_locate_each_crop_in_its_image(setup):
  config, train, _ = setup
  config = config.copy_and_resolve_references()
  config.data.color_jitter = (0.0, 0.0, 0.0, 0.0)
  config.data.resize = 36  # the images' shorter side (36x44): no resize
  seen_flip = set()
  for epoch in range(3):
    b = next(ip.train_iterator(train, config, num_nodes=2, global_batch=4, epoch=epoch,
                               normalization='caffe_bgr', process_index=0, process_count=1))
    assert b['boxes'].shape == (4, 2, 4) and b['flips'].shape == (4, 2)
    for img, i, box, flip in zip(b['images'].reshape(-1, 24, 24, 3), b['index'].reshape(-1),
                                 b['boxes'].reshape(-1, 4), b['flips'].reshape(-1)):
      pixels = np.asarray(Image.open(train.examples[i].image_path).convert('RGB'), np.float32)
      top, left = int(round(box[0] * 36)), int(round(box[1] * 44))
      assert (round(box[2] * 36) - top, round(box[3] * 44) - left) == (24, 24)
      ref = norm_lib.normalize(pixels[top:top + 24, left:left + 24], 'caffe_bgr')
      np.testing.assert_allclose(img[:, ::-1] if flip else img, ref, atol=1e-3)
      seen_flip.add(bool(flip))
  assert seen_flip == {False, True}


def test_release_input_square_resize_no_crop_no_flip_list_order(setup, tmp_path):
  """The release's loader: each image resized to a 32 x 32 square (PIL bilinear, aspect not
  kept), no crop, no flip, anchors in list order; OAA then maps the CAM onto the whole image by
  a plain resize (here the identity: the store's grid is the feature grid of the input)."""
  from gwsss_jax.cams import oaa  # pylint: disable=g-import-not-at-top
  config, train, _ = setup
  config = config.copy_and_resolve_references()
  config.data.resize_mode, config.data.resize, config.data.crop_size = 'square', 32, 0
  config.data.flip = False
  config.data.color_jitter = (0.0, 0.0, 0.0, 0.0)
  config.train.anchor_order = 'list'
  config_lib.validate(config)
  assert ip.input_size(config) == 32
  batches = _collect(ip.train_iterator(train, config, num_nodes=3, global_batch=4, epoch=1,
                                       normalization='imagenet_rgb', process_index=0,
                                       process_count=1))
  anchors = np.concatenate([b['index'][:, 0] for b in batches])
  np.testing.assert_array_equal(anchors, np.arange(len(anchors)))  # list order, every epoch
  for b in batches:
    assert b['images'].shape == (4, 3, 32, 32, 3)
    np.testing.assert_array_equal(b['boxes'], np.broadcast_to([0.0, 0.0, 1.0, 1.0], (4, 3, 4)))
    assert not b['flips'].any()
    for img, i in zip(b['images'].reshape(-1, 32, 32, 3), b['index'].reshape(-1)):
      with Image.open(train.examples[i].image_path) as im:  # the release's Resize((256, 256))
        ref = np.asarray(im.convert('RGB').resize((32, 32), Image.BILINEAR), np.float32)
      # PIL rounds to uint8 and its antialiasing filter differs slightly from TensorFlow's.
      err = np.abs(img - norm_lib.normalize(ref, 'imagenet_rgb')) * 0.226 * 255
      assert err.mean() < 0.5 and err.max() < 2.0, (err.mean(), err.max())
  # OAA: the map of the whole squashed image lands unchanged on the store's grid.
  b = batches[0]
  labels = train.label_matrix()
  store = oaa.OAAStore.open(str(tmp_path), labels, (4, 4), process_index=0)
  cams = np.random.default_rng(0).random((1, 4, 4, labels.shape[1])).astype(np.float32)
  i = int(b['index'][0, 0])
  store.update([i], cams, np.ones((1, labels.shape[1])), 0.1, False,
               boxes=b['boxes'][0, :1], flips=b['flips'][0, :1])
  for c, m in store.get(i).items():
    np.testing.assert_array_equal(m, np.rint(cams[0, ..., c] * 255).astype(np.uint8))
  assert store.get(i)


@pytest.mark.parametrize('key,value,named', [
    ('data.crop_size', 0, 'resize_mode'), ('data.resize_mode', 'long', 'data.resize_mode'),
    ('train.anchor_order', 'sorted', 'train.anchor_order')])
def test_input_keys_are_validated(key, value, named):
  config = config_lib.base_config()
  section, name = key.split('.')
  config[section][name] = value
  with pytest.raises(UserError, match=named):
    config_lib.validate(config)


def test_train_shards_are_disjoint_and_complete(setup):
  config, train, _ = setup
  full = _collect(ip.train_iterator(train, config, num_nodes=2, global_batch=4, epoch=0,
                                    process_index=0, process_count=1))
  parts = [_collect(ip.train_iterator(train, config, num_nodes=2, global_batch=4, epoch=0,
                                      process_index=p, process_count=2)) for p in range(2)]
  for n, batch in enumerate(full):
    joined = np.concatenate([parts[0][n]['index'], parts[1][n]['index']])
    np.testing.assert_array_equal(joined, batch['index'])
    np.testing.assert_array_equal(
        np.concatenate([parts[0][n]['images'], parts[1][n]['images']]), batch['images'])
  with pytest.raises(UserError, match='train.batch_size'):
    ip.train_iterator(train, config, num_nodes=2, global_batch=3, epoch=0, process_index=0,
                      process_count=2)


def test_eval_batches_padded_masked_and_sharded(setup):
  config, _, val = setup
  assert len(val) == 6
  kw = dict(batch_size=2, pad_to=(40, 50), normalization='imagenet_rgb')
  parts = [_collect(ip.eval_iterator(val, config, process_index=p, process_count=2, **kw))
           for p in range(2)]
  assert [len(p) for p in parts] == [2, 2]  # 6 examples -> 8 slots, 2 padding
  seen = []
  for part in parts:
    for b in part:
      assert b['images'].shape == (2, 40, 50, 3) and b['masks'].dtype == np.uint8
      for img, mask, hw, i, valid in zip(b['images'], b['masks'], b['hw'], b['index'],
                                         b['valid']):
        if not valid:
          assert i == -1 and (mask == 255).all() and (img == 0).all()
          continue
        seen.append(int(i))
        h, w = hw
        assert (h, w) == (36, 44)
        ref = palette.read_label_png(val.examples[i].mask_path)
        np.testing.assert_array_equal(mask[:h, :w], ref)
        assert (mask[h:] == 255).all() and (mask[:, w:] == 255).all()
        assert (img[h:] == 0).all()
        pixels = np.asarray(Image.open(val.examples[i].image_path).convert('RGB'))
        np.testing.assert_allclose(img[:h, :w], norm_lib.normalize(pixels, 'imagenet_rgb'),
                                   atol=1e-5)
  assert sorted(seen) == list(range(6))
  # Default padding: the largest image; no masks requested -> all 255.
  b = next(ip.eval_iterator(val, config, batch_size=4, process_index=0, process_count=1,
                            with_masks=False))
  assert b['images'].shape == (4, 36, 44, 3) and (b['masks'] == 255).all()
  with pytest.raises(UserError, match='larger than'):
    ip.eval_iterator(val, config, batch_size=2, pad_to=(20, 20), process_index=0,
                     process_count=1)


def test_seg_batches_and_resume(setup, tmp_path):
  config, train, _ = setup
  kw = dict(global_batch=4, normalization='imagenet_rgb', process_index=0, process_count=1)
  it = ip.seg_train_iterator(train, config, **kw)
  batches = [next(it) for _ in range(4)]  # 16 > 12 examples: crosses an epoch
  b = batches[0]
  assert b['images'].shape == (4, 40, 40, 3) and b['labels'].dtype == np.int32
  assert set(np.unique(b['labels'])) <= {0, 1, 2, 3, 4, 255}
  assert (b['labels'] == 255).any()  # padding (images are 36x44, crop 40, scale <= 1.5)
  resumed = next(ip.seg_train_iterator(train, config, start_step=3, **kw))
  for key in b:
    np.testing.assert_array_equal(batches[3][key], resumed[key])
  halves = [next(ip.seg_train_iterator(train, config, start_step=3, global_batch=4,
                                       process_index=p, process_count=2)) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([h['labels'] for h in halves]),
                                batches[3]['labels'])
  # Pseudo labels from a directory; a missing one is reported.
  label_dir = str(tmp_path / 'pseudo')
  for ex in train.examples:
    palette.save_label_png(os.path.join(label_dir, ex.name + '.png'),
                           np.full((36, 44), 2, np.uint8))
  b = next(ip.seg_train_iterator(train, config, label_dir=label_dir, **kw))
  assert set(np.unique(b['labels'])) <= {2, 255}
  os.remove(os.path.join(label_dir, train.examples[0].name + '.png'))
  with pytest.raises(UserError, match='pseudo label not found'):
    ip.seg_train_iterator(train, config, label_dir=label_dir, **kw)


def test_benchmark_returns_a_rate(setup):
  config, _, _ = setup
  config = config.copy_and_resolve_references()
  config.train.batch_size = 2
  config.model.num_nodes = 2
  assert ip.benchmark(config, num_batches=2) > 0


def test_sampler_is_the_source_of_groups(setup):
  config, train, _ = setup
  groups, _, _ = ip.epoch_groups(train, config, num_nodes=3, epoch=4)
  ref, _ = sampler.make_groups(train.label_matrix(), 3, seed=config.seed, epoch=4)
  np.testing.assert_array_equal(groups, ref)


def test_repeats_per_epoch_matches_a_group_models_images(setup):
  """K = 1 with 3 repeats: every image 3 times an epoch, as many steps as groups of 3."""
  config, train, _ = setup
  single = config.copy_and_resolve_references()
  single.train.repeats_per_epoch = 3
  groups, adjacency, order = ip.epoch_groups(train, single, num_nodes=1, epoch=2)
  assert groups.shape == (3 * len(train), 1) and adjacency.shape == (3 * len(train), 1, 1)
  np.testing.assert_array_equal(np.bincount(groups[:, 0]), np.full(len(train), 3))
  assert sorted(order.tolist()) == list(range(3 * len(train)))
  # Epoch e of R rounds draws the groups of the unrepeated epochs e*R ... e*R + R - 1.
  g3, _, _ = ip.epoch_groups(train, config, num_nodes=3, epoch=2)
  r3 = config.copy_and_resolve_references()
  r3.train.repeats_per_epoch = 2
  g3r, _, _ = ip.epoch_groups(train, r3, num_nodes=3, epoch=1)
  np.testing.assert_array_equal(g3r[:len(train)], g3)
  from gwsss_jax.stages import train_cls  # pylint: disable=g-import-not-at-top
  single.train.batch_size = 6
  group = config.copy_and_resolve_references()
  group.train.batch_size = 2
  assert train_cls.schedule(single, len(train)) == train_cls.schedule(group, len(train))
  batches = _collect(ip.train_iterator(train, single, num_nodes=1, global_batch=6, epoch=0,
                                       process_index=0, process_count=1))
  assert len(batches) == len(train) * 3 // 6
  with pytest.raises(UserError, match='train.repeats_per_epoch'):
    bad = config.copy_and_resolve_references()
    bad.train.repeats_per_epoch = 0
    config_lib.validate(bad)


def test_shuffle_members_keeps_each_images_appearances_not_its_partners(setup):
  """train.shuffle_members: per round, the same multiset of images as the sampler's groups,
  but spread over the groups at random; the adjacency is recomputed from the labels."""
  config, train, _ = setup
  shuffled = config.copy_and_resolve_references()
  shuffled.train.shuffle_members = True
  shuffled.train.repeats_per_epoch = 2
  plain = shuffled.copy_and_resolve_references()
  plain.train.shuffle_members = False
  g, _, order = ip.epoch_groups(train, plain, num_nodes=3, epoch=1)
  gs, adj, order_s = ip.epoch_groups(train, shuffled, num_nodes=3, epoch=1)
  n = len(train)
  assert gs.shape == g.shape and np.array_equal(order, order_s)
  for j in range(2):  # each round keeps its images, and each image its count
    np.testing.assert_array_equal(np.bincount(gs[j * n:(j + 1) * n].ravel(), minlength=n),
                                  np.bincount(g[j * n:(j + 1) * n].ravel(), minlength=n))
  assert not np.array_equal(gs, g)
  np.testing.assert_array_equal(
      adj, test_sampler.brute_force_adjacency(train.label_matrix().astype(bool), gs))
  again, _, _ = ip.epoch_groups(train, shuffled, num_nodes=3, epoch=1)
  np.testing.assert_array_equal(again, gs)  # a function of (seed, epoch)


def test_batches_name_the_round_of_each_group(setup):
  """'round': with K = 1 and 3 rounds, each round's groups show every image once (the rounds
  are shuffled together over the epoch); without repeats every group is of round 0."""
  config, train, _ = setup
  single = config.copy_and_resolve_references()
  single.train.repeats_per_epoch = 3
  batches = _collect(ip.train_iterator(train, single, num_nodes=1, global_batch=6, epoch=1,
                                       process_index=0, process_count=1))
  rounds = np.concatenate([b['round'] for b in batches])
  anchors = np.concatenate([b['index'][:, 0] for b in batches])
  assert rounds.dtype == np.int32 and len(rounds) == 3 * len(train)
  for j in range(3):
    assert sorted(anchors[rounds == j].tolist()) == list(range(len(train)))
  assert len(set(rounds[:len(train)].tolist())) > 1  # interleaved, not round after round
  plain = _collect(ip.train_iterator(train, config, num_nodes=3, global_batch=2, epoch=0,
                                     process_index=0, process_count=1))
  assert not np.concatenate([b['round'] for b in plain]).any()
  for value in (-1, 4):
    with pytest.raises(UserError, match='cams.oaa_rounds'):
      bad = single.copy_and_resolve_references()
      bad.cams.oaa_rounds = value
      config_lib.validate(bad)


def test_eval_at_training_resolution(setup):
  """`resize`: shorter side to `resize`, centre square; PIL's antialiased resize as reference."""
  config, _, val = setup
  spec = {'name': 'plain', 'channel_order': 'rgb', 'mean': (0.0, 0.0, 0.0),
          'std': (1.0, 1.0, 1.0)}
  b = next(ip.eval_iterator(val, config, batch_size=2, normalization=spec, with_masks=False,
                            resize=28))
  assert b['images'].shape == (2, 28, 28, 3)
  np.testing.assert_array_equal(b['hw'], [[28, 28], [28, 28]])
  for i in range(2):
    img = Image.open(val.examples[int(b['index'][i])].image_path).convert('RGB')
    w, h = img.size  # 44 x 36 -> 34 x 28, then columns 3..31
    new_w = round(w * 28 / h)
    want = np.asarray(img.resize((new_w, 28), Image.BILINEAR), np.float32)
    left = (new_w - 28) // 2
    np.testing.assert_allclose(b['images'][i], want[:, left:left + 28], atol=12)
    assert np.abs(b['images'][i] - want[:, left:left + 28]).mean() < 2.0
  with pytest.raises(ValueError, match='with_masks'):
    next(ip.eval_iterator(val, config, batch_size=2, normalization=spec, resize=28))
