"""DeepLab-v2 / LargeFOV: shapes, the ASPP against a numpy dilated convolution, frozen BatchNorm
under training, and DeepLab's learning-rate groups against a hand-written SGD step."""

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gwsss_jax import config as config_lib
from gwsss_jax.common.errors import UserError
from gwsss_jax.models import deeplab
from gwsss_jax.seg import common
from gwsss_jax.seg import losses


def _seg_config(model='deeplab_v2_resnet101', num_classes=4):
  config = config_lib.base_config()
  config.data.num_classes = num_classes - 1
  config.seg.model = model
  config.seg.width = 0.0625
  config.seg.crop_size = 32
  config.seg.num_steps = 10
  return config


@pytest.mark.parametrize('model', ['deeplab_v2_resnet101', 'deeplab_largefov_vgg16'])
def test_output_stride_8_and_classes(model):
  config = _seg_config(model, num_classes=5)
  module = deeplab.build_segmenter(config.seg)
  x = jnp.zeros((2, 64, 64, 3))
  variables = jax.eval_shape(module.init, jax.random.key(0), x)
  out = jax.eval_shape(module.apply, variables, x)
  assert out.shape == (2, 8, 8, 5)
  assert out.dtype == jnp.float32
  if model == 'deeplab_v2_resnet101':
    assert sorted(variables['params']['aspp']) == [f'aspp_{i}' for i in range(4)]
    assert variables['params']['aspp']['aspp_0']['kernel'].shape == (3, 3, 128, 5)
  else:
    assert sorted(variables['params']) == ['backbone', 'fc6', 'fc7', 'fc8']


def _numpy_dilated_conv(x, kernel, bias, rate):
  """'Same' 3x3 convolution with dilation `rate` (zero padding `rate`), NHWC / HWIO."""
  h, w = x.shape[1:3]
  xp = np.pad(x, ((0, 0), (rate, rate), (rate, rate), (0, 0)))
  out = np.zeros(x.shape[:3] + (kernel.shape[-1],), np.float64) + bias
  for ky in range(3):
    for kx in range(3):
      out += xp[:, ky * rate:ky * rate + h, kx * rate:kx * rate + w] @ kernel[ky, kx]
  return out


def test_aspp_is_the_sum_of_four_dilated_convs():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 30, 27, 3)).astype(np.float32)
  aspp = deeplab.ASPP(num_classes=2)
  params = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32),
                        jax.eval_shape(aspp.init, jax.random.key(0), x)['params'])
  got = np.asarray(aspp.apply({'params': params}, x))
  want = sum(_numpy_dilated_conv(x, params[f'aspp_{i}']['kernel'], params[f'aspp_{i}']['bias'],
                                 rate) for i, rate in enumerate((6, 12, 18, 24)))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('branch,rate', list(enumerate(deeplab.ASPP_RATES)))
def test_aspp_branch_support_is_at_its_rate(branch, rate):
  # A delta input: branch i alone (the others zero) responds exactly at offsets {0, +-rate}^2.
  size, c = 61, 30
  x = np.zeros((1, size, size, 1), np.float32)
  x[0, c, c, 0] = 1.0
  aspp = deeplab.ASPP(num_classes=1)
  params = jax.tree.map(lambda p: np.zeros(p.shape, np.float32),
                        jax.eval_shape(aspp.init, jax.random.key(0), x)['params'])
  params[f'aspp_{branch}']['kernel'] = np.ones((3, 3, 1, 1), np.float32)
  out = np.asarray(aspp.apply({'params': params}, x))[0, :, :, 0]
  support = {(int(i) - c, int(j) - c) for i, j in zip(*np.nonzero(out))}
  assert support == {(dy * rate, dx * rate) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}


def _random_variables(module, size, rng):
  """Variables of `module` drawn with numpy (no initialiser to compile: keeps the test fast)."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  return jax.tree.map(lambda s: rng.uniform(0.5, 1.5, s.shape).astype(np.float32) * (
      0.1 if len(s.shape) == 4 else 1.0), shapes)


def test_frozen_batchnorm_is_frozen_under_training():
  config = _seg_config()
  # DeepLab-v2's module with one block per ResNet layer: the same BatchNorm code, less compile.
  module = deeplab.DeepLabV2(num_classes=4, width=0.0625, stage_sizes=(1, 1, 1, 1))
  rng = np.random.default_rng(1)
  variables = _random_variables(module, 32, rng)
  params, batch_stats = variables['params'], variables['batch_stats']
  tx, _ = common.optimizer(config, params)
  images = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 4, size=(2, 32, 32)), jnp.int32)

  def loss_fn(p):
    logits, updated = module.apply({'params': p, 'batch_stats': batch_stats}, images,
                                   train=True, mutable=['batch_stats'])
    return losses.cross_entropy(logits, labels)[0], updated['batch_stats']

  @jax.jit
  def step(p):
    grads, new_stats = jax.grad(loss_fn, has_aux=True)(p)
    updates, _ = tx.update(grads, tx.init(p), p)
    return grads, new_stats, jax.tree.map(lambda a, u: a + u, p, updates)
  grads, new_stats, new_params = step(params)

  for a, b in zip(jax.tree.leaves(batch_stats), jax.tree.leaves(new_stats)):
    np.testing.assert_array_equal(a, b)
  old, new = traverse_util.flatten_dict(params), traverse_util.flatten_dict(new_params)
  labels_flat = traverse_util.flatten_dict(deeplab.param_labels(params))
  bn_keys = [k for k in old if labels_flat[k] == deeplab.FROZEN]
  assert len(bn_keys) == len(jax.tree.leaves(batch_stats))  # scale, bias / mean, var per BN
  flat_grads = traverse_util.flatten_dict(grads)
  for k in bn_keys:
    np.testing.assert_array_equal(flat_grads[k], 0.0)
    np.testing.assert_array_equal(old[k], new[k])
  assert not np.allclose(old[('aspp', 'aspp_0', 'kernel')], new[('aspp', 'aspp_0', 'kernel')])
  assert not np.allclose(old[('backbone', 'conv1', 'kernel')], new[('backbone', 'conv1', 'kernel')])


def test_deeplab_learning_rate_groups():
  # One SGD step from zero momentum: update = -lr * mult * (g + wd * w) for weights and
  # -lr * mult * g for biases (no decay), each group's mult from its seg.*_lr_mult key.
  config = _seg_config('deeplab_largefov_vgg16')
  config.seg.base_lr = 0.1
  config.seg.backbone_bias_lr_mult, config.seg.new_lr_mult = 3.0, 10.0
  config.seg.new_bias_lr_mult = 7.0
  config.seg.weight_decay = 0.01
  module = deeplab.build_segmenter(config.seg)
  params = _random_variables(module, 32, np.random.default_rng(0))['params']
  tx, groups = common.optimizer(config, params)
  assert sorted(groups) == ['backbone_bias', 'backbone_weight', 'head_bias', 'head_weight']
  grads = jax.tree.map(lambda p: np.full(p.shape, 0.5, np.float32), params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  flat_params = traverse_util.flatten_dict(params)
  for path, u in traverse_util.flatten_dict(updates).items():
    p = flat_params[path]
    if path[-1] == 'bias':
      mult = 3.0 if path[0] == 'backbone' else 7.0
      want = -0.1 * mult * 0.5 * np.ones_like(p)
    else:
      mult = 1.0 if path[0] == 'backbone' else 10.0
      want = -0.1 * mult * (0.5 + 0.01 * p)
    np.testing.assert_allclose(np.asarray(u), want, rtol=1e-5, atol=1e-7, err_msg=str(path))
  # Poly decay: lr(t) = base * (1 - t / num_steps) ** 0.9.
  np.testing.assert_allclose(float(groups['head_weight'](4)), 1.0 * (1 - 4 / 10) ** 0.9,
                             rtol=1e-6)


def test_head_warmup_holds_the_backbone_then_starts_it_without_momentum():
  # numpy SGD (momentum m, coupled decay wd, poly lr) of one backbone weight and one head
  # weight under varying gradients; the backbone is held for the first `hold` steps: it does
  # not move and its momentum starts from zero at step `hold`, at the poly rate of that step.
  config = _seg_config('deeplab_largefov_vgg16')
  config.seg.base_lr, config.seg.new_lr_mult, config.seg.weight_decay = 0.1, 10.0, 0.01
  config.seg.momentum, config.seg.num_steps, config.seg.head_warmup_steps = 0.9, 10, 3
  hold, steps = 3, 6
  module = deeplab.build_segmenter(config.seg)
  params = _random_variables(module, 32, np.random.default_rng(0))['params']
  tx, groups = common.optimizer(config, params)
  path_b, path_h = ('backbone', 'conv3_1', 'kernel'), ('fc8', 'kernel')
  rng = np.random.default_rng(1)
  flat = traverse_util.flatten_dict(params)
  grads_seq = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in flat.items()}
               for _ in range(steps)]
  state, p = tx.init(params), params
  update = jax.jit(tx.update)
  want = {path_b: np.asarray(flat[path_b]), path_h: np.asarray(flat[path_h])}
  buf = {path_b: 0.0, path_h: 0.0}
  for t in range(steps):
    grads = traverse_util.unflatten_dict(grads_seq[t])
    u, state = update(grads, state, p)
    p = jax.tree.map(lambda a, b: a + b, p, u)
    for path, mult in ((path_b, 1.0), (path_h, 10.0)):
      if path == path_b and t < hold:
        continue
      lr = 0.1 * mult * (1 - t / 10) ** 0.9
      buf[path] = 0.9 * buf[path] + grads_seq[t][path] + 0.01 * want[path]
      want[path] = want[path] - lr * buf[path]
    got = traverse_util.flatten_dict(p)
    for path in (path_b, path_h):
      np.testing.assert_allclose(np.asarray(got[path]), want[path], rtol=1e-4, atol=1e-6,
                                 err_msg=f'{path} at step {t}')
  assert float(groups['backbone_weight'](hold - 1)) == 0.0
  np.testing.assert_allclose(float(groups['backbone_weight'](hold)), 0.1 * 0.7 ** 0.9, rtol=1e-6)
  np.testing.assert_allclose(float(groups['head_weight'](0)), 1.0, rtol=1e-6)


def test_head_warmup_must_end_before_the_run():
  config = _seg_config('deeplab_largefov_vgg16')
  config.seg.head_warmup_steps = config.seg.num_steps
  with pytest.raises(UserError, match='seg.head_warmup_steps'):
    config_lib.validate(config)


def test_resnet_groups_have_no_trunk_bias_and_frozen_bn():
  config = _seg_config()
  module = deeplab.build_segmenter(config.seg)
  params = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
  labels = deeplab.param_labels(params)
  assert labels['aspp']['aspp_1'] == {'kernel': 'head_weight', 'bias': 'head_bias'}
  assert labels['backbone']['layer1_0']['bn1'] == {'scale': 'frozen', 'bias': 'frozen'}
  assert labels['backbone']['layer1_0']['downsample_bn']['scale'] == 'frozen'
  assert labels['backbone']['layer3_2']['conv2'] == {'kernel': 'backbone_weight'}


@pytest.mark.parametrize('num_classes,aspp_loaded', [(21, True), (5, False)])
def test_deeplab_coco_init_is_placed_with_its_layout(tmp_path, num_classes, aspp_loaded):
  # A converted COCO-init directory (what `convert --format=deeplab_coco` writes) for the tiny
  # trunk: the Caffe layout is selected, the trunk placed, the ASPP only when 21 classes.
  from gwsss_jax.models import convert  # pylint: disable=g-import-not-at-top
  from gwsss_jax.models import resnet  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  trunk = resnet.ResNet101(width=0.0625, stride_in_1x1=True, pool_ceil_mode=True)
  shapes = jax.eval_shape(trunk.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  backbone = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
  aspp = {f'aspp_{i}': {'kernel': rng.normal(size=(3, 3, 128, 21)).astype(np.float32),
                        'bias': rng.normal(size=(21,)).astype(np.float32)} for i in range(4)}
  path = str(tmp_path / 'coco_init')
  convert.save_pretrained(path, {'backbone': backbone, 'aspp': aspp},
                          convert.normalization_spec('caffe_bgr', mean=convert.DEEPLAB_CAFFE_MEAN),
                          'test', 'resnet101_caffe')
  config = _seg_config(num_classes=num_classes)
  config.seg.pretrained = path
  pretrained, meta = common.load_pretrained(config.seg)
  info = common.model_info(config, meta)
  # DeepLab's own BGR mean reaches the pipeline, not the named convention's ImageNet mean.
  assert info['caffe_layout'] and info['normalization']['name'] == 'caffe_bgr'
  assert tuple(info['normalization']['mean']) == (104.008, 116.669, 122.675)
  module = common.build_model(config, info['caffe_layout'])
  assert module.stride_in_1x1 and module.pool_ceil_mode
  template = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  placed = common.apply_pretrained(template, pretrained)
  np.testing.assert_array_equal(placed['params']['backbone']['layer2_0']['conv1']['kernel'],
                                backbone['params']['layer2_0']['conv1']['kernel'])
  np.testing.assert_array_equal(placed['batch_stats']['backbone']['bn1']['var'],
                                backbone['batch_stats']['bn1']['var'])
  if aspp_loaded:
    np.testing.assert_array_equal(placed['params']['aspp']['aspp_3']['bias'],
                                  aspp['aspp_3']['bias'])
  else:
    assert isinstance(placed['params']['aspp']['aspp_3']['bias'], jax.ShapeDtypeStruct)


@pytest.mark.parametrize('fc_width', [0.0625, 0.125])
def test_largefov_fc_from_the_weights_is_placed_and_trains_at_the_trunk_rate(tmp_path, fc_width):
  # Converted VGG16 weights that carry fc6/fc7 (`convert --format=torchvision_vgg16` on the
  # full file): placed into LargeFOV and trained at lr_mult 1/2 as in DeepLab's prototxt, when
  # their shapes fit the model; otherwise fc6/fc7 stay new, in the head group.
  from gwsss_jax.models import convert  # pylint: disable=g-import-not-at-top
  from gwsss_jax.models import vgg  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  width = 0.0625
  trunk = vgg.VGG16LargeFOV(width=width)
  shapes = jax.eval_shape(trunk.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  backbone = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
  dim, cin = vgg.scaled(1024, fc_width), vgg.scaled(512, fc_width)
  fc = {'fc6': {'kernel': rng.normal(size=(3, 3, cin, dim)).astype(np.float32),
                'bias': rng.normal(size=(dim,)).astype(np.float32)},
        'fc7': {'kernel': rng.normal(size=(1, 1, dim, dim)).astype(np.float32),
                'bias': rng.normal(size=(dim,)).astype(np.float32)}}
  path = str(tmp_path / 'vgg16_fc')
  convert.save_pretrained(path, {'backbone': backbone, convert.LARGEFOV_FC: fc}, 'imagenet_rgb',
                          'test', 'vgg16')
  config = _seg_config('deeplab_largefov_vgg16')
  config.seg.pretrained = path
  pretrained, meta = common.load_pretrained(config.seg)
  assert meta['has_largefov_fc']
  info = common.model_info(config, meta, pretrained)
  fits = fc_width == width
  assert info['pretrained_head'] == (['fc6', 'fc7'] if fits else [])
  module = common.build_model(config, info['caffe_layout'])
  template = {'params': jax.eval_shape(module.init, jax.random.key(0),
                                       jnp.zeros((1, 32, 32, 3)))['params'], 'batch_stats': {}}
  placed = common.apply_pretrained(template, pretrained, info['pretrained_head'])
  np.testing.assert_array_equal(placed['params']['backbone']['conv5_3']['kernel'],
                                backbone['params']['conv5_3']['kernel'])
  labels = deeplab.param_labels(placed['params'], info['pretrained_head'])
  assert labels['fc8'] == {'kernel': 'head_weight', 'bias': 'head_bias'}
  if fits:
    np.testing.assert_array_equal(placed['params']['fc6']['kernel'], fc['fc6']['kernel'])
    np.testing.assert_array_equal(placed['params']['fc7']['bias'], fc['fc7']['bias'])
    assert labels['fc6'] == {'kernel': 'backbone_weight', 'bias': 'backbone_bias'}
  else:
    assert isinstance(placed['params']['fc6']['kernel'], jax.ShapeDtypeStruct)
    assert labels['fc6'] == {'kernel': 'head_weight', 'bias': 'head_bias'}


def test_pretrained_of_the_wrong_network_is_a_user_error(tmp_path):
  from gwsss_jax.common.errors import UserError  # pylint: disable=g-import-not-at-top
  from gwsss_jax.models import convert  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / 'vgg')
  convert.save_pretrained(path, {'params': {'conv1_1': {'kernel': np.zeros((3, 3, 3, 4))}}},
                          'imagenet_rgb', 'test', 'vgg16')
  config = _seg_config()
  config.seg.pretrained = path
  with pytest.raises(UserError, match='seg.pretrained'):
    common.load_pretrained(config.seg)
