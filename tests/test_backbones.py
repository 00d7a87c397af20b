"""VGG16 and ResNet-101 trunks: sizes, parameter counts, pools and frozen BatchNorm.

Numbers are checked against torch (pooling) and numpy (BatchNorm); the weight-level parity of
whole networks with torch re-statements is in test_convert.py.
"""

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from gwsss_jax.models import resnet
from gwsss_jax.models import vgg


def _shapes(module, size):
  x = jnp.zeros((1, size, size, 3), jnp.float32)
  variables = jax.eval_shape(module.init, jax.random.key(0), x)
  return variables, jax.eval_shape(module.apply, variables, x)


def random_variables(module, x, seed=0):
  """Variables of `module` drawn with numpy (flax's initializers are slow to compile on CPU).

  BatchNorm gets non-trivial statistics and affine parameters, so that a wrong mapping or an
  unused statistic shows in the outputs.
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name == 'kernel':
      value = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
    elif name in ('mean', 'bias'):
      value = rng.normal(0.0, 0.1, size=shape)
    else:  # var, scale
      value = rng.uniform(0.5, 1.5, size=shape)
    return value.astype(np.float32)

  shapes = jax.eval_shape(module.init, jax.random.key(0), x)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_vgg16_parameters_names_and_output_stride():
  variables, out = _shapes(vgg.VGG16(), 224)
  assert _count(variables['params']) == 14_714_688
  assert list(variables['params']) == [f'conv{b}_{i}' for b, n, _ in vgg.BLOCKS
                                       for i in range(1, n + 1)]
  assert variables['params']['conv5_1']['kernel'].shape == (3, 3, 512, 512)
  assert out.shape == (1, 28, 28, 512)


@pytest.mark.parametrize('module,size,expected', [
    (vgg.VGG16ImageNet(), 224, 14),       # ImageNet VGG16 convolutions: stride 16.
    (vgg.VGG16LargeFOV(), 321, 41),       # DeepLab-LargeFOV: 321 -> 41.
    (vgg.VGG16(width=0.0625), 64, 8),     # the release at test width: stride 8, 32 channels.
])
def test_vgg16_variants(module, size, expected):
  _, out = _shapes(module, size)
  assert out.shape[1:3] == (expected, expected)
  assert out.shape[3] == round(512 * module.width)


def test_vgg16_pools_match_torch():
  x = np.random.default_rng(0).normal(size=(1, 4, 11, 10)).astype(np.float32)
  xj = jnp.asarray(x.transpose(0, 2, 3, 1))
  for window, stride, pad in ((2, 2, 0), (3, 1, 1), (3, 2, 1)):
    ref = torch.nn.functional.max_pool2d(torch.from_numpy(x), window, stride, pad).numpy()
    np.testing.assert_array_equal(np.asarray(vgg.max_pool(xj, window, stride)),
                                  ref.transpose(0, 2, 3, 1))


@pytest.mark.parametrize('ceil_mode', [False, True])
def test_resnet_stem_pool_matches_torch(ceil_mode):
  for size in (15, 16, 17, 18):
    x = np.random.default_rng(size).normal(size=(1, 2, size, size + 1)).astype(np.float32)
    ref = torch.nn.functional.max_pool2d(torch.from_numpy(x), 3, 2, 1, ceil_mode=ceil_mode)
    ours = resnet._max_pool_3x3_s2(jnp.asarray(x.transpose(0, 2, 3, 1)), ceil_mode)
    np.testing.assert_array_equal(np.asarray(ours), ref.numpy().transpose(0, 2, 3, 1))


def test_resnet101_parameters_and_output_strides():
  for output_stride, size in ((16, 14), (8, 28)):
    variables, out = _shapes(resnet.ResNet101(output_stride=output_stride), 224)
    assert {k: v.shape[1] for k, v in out.items()} == {
        'layer1': 56, 'layer2': 28, 'layer3': size, 'layer4': size}
    assert out['layer4'].shape[-1] == 2048
  # torchvision's resnet101 has 44,549,160 parameters, of which fc holds 2048 * 1000 + 1000.
  assert _count(variables['params']) == 44_549_160 - 2_049_000
  # BatchNorm running statistics: a mean and a variance per scale.
  assert _count(variables['batch_stats']) == 2 * sum(
      v.size for k, v in traverse_util.flatten_dict(variables['params']).items()
      if k[-1] == 'scale')
  assert len(variables['params']) == 2 + 3 + 4 + 23 + 3
  assert set(variables['params']['layer1_0']) == {
      'conv1', 'bn1', 'conv2', 'bn2', 'conv3', 'bn3', 'downsample_conv', 'downsample_bn'}


def test_resnet_stride_placement():
  """Torchvision strides the 3x3 convolution, Caffe (DeepLab init) the first 1x1."""
  x = jnp.zeros((1, 32, 32, 3))
  for stride_in_1x1, strided in ((False, 'conv2'), (True, 'conv1')):
    model = resnet.ResNet(stage_sizes=(1, 1, 1, 1), width=0.0625, output_stride=32,
                          stride_in_1x1=stride_in_1x1)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    _, state = jax.eval_shape(lambda v: model.apply(v, x, capture_intermediates=True), variables)
    block = state['intermediates']['layer2_0']
    assert block[strided]['__call__'][0].shape[1] == 4  # 8x8 after the stem, halved here.
    other = 'conv1' if strided == 'conv2' else 'conv2'
    assert block[other]['__call__'][0].shape[1] == (8 if strided == 'conv2' else 4)


def _tiny_resnet(freeze_bn):
  model = resnet.ResNet(stage_sizes=(1, 1, 1, 1), width=0.0625, freeze_bn=freeze_bn)
  x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
  return model, random_variables(model, x), x


def test_frozen_batchnorm_neither_updates_nor_trains():
  model, variables, x = _tiny_resnet(freeze_bn=True)
  stats = variables['batch_stats']

  @jax.jit
  def train_and_eval(params):
    def loss(params):
      out, updates = model.apply({'params': params, 'batch_stats': stats}, x, train=True,
                                 mutable=['batch_stats'])
      return jnp.sum(out['layer4'] ** 2), (out['layer4'], updates['batch_stats'])

    grads, (out_train, new_stats) = jax.grad(loss, has_aux=True)(params)
    out_eval = model.apply({'params': params, 'batch_stats': stats}, x)['layer4']
    return grads, out_train, new_stats, out_eval

  grads, out_train, new_stats, out_eval = train_and_eval(variables['params'])
  np.testing.assert_array_equal(out_train, out_eval)
  for a, b in zip(jax.tree.leaves(new_stats), jax.tree.leaves(stats)):
    np.testing.assert_array_equal(a, b)
  mask = traverse_util.flatten_dict(resnet.batchnorm_mask(variables['params']))
  assert sum(mask.values()) == 2 * (1 + 4 * 3 + 4)  # stem, 3 per block, 4 downsamples.
  for path, g in traverse_util.flatten_dict(grads).items():
    assert np.any(np.asarray(g)) != mask[path], path


def test_unfrozen_batchnorm_matches_numpy():
  bn = resnet.BatchNorm(frozen=False)
  x = np.random.default_rng(0).normal(2.0, 3.0, size=(4, 5, 6, 3)).astype(np.float32)
  params = {'scale': jnp.array([1.0, 2.0, 0.5]), 'bias': jnp.array([0.1, -0.2, 0.3])}
  stats = {'mean': jnp.array([0.5, 0.0, -1.0]), 'var': jnp.array([2.0, 1.0, 3.0])}
  out, updates = bn.apply({'params': params, 'batch_stats': stats}, x, train=True,
                          mutable=['batch_stats'])
  mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
  expected = (x - mean) / np.sqrt(var + 1e-5) * np.asarray(params['scale']) + np.asarray(
      params['bias'])
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(updates['batch_stats']['mean'], 0.9 * stats['mean'] + 0.1 * mean,
                             rtol=1e-5)
  np.testing.assert_allclose(updates['batch_stats']['var'], 0.9 * stats['var'] + 0.1 * var,
                             rtol=1e-5)


def test_width_scales_every_layer():
  variables, out = _shapes(resnet.ResNet(stage_sizes=(1, 1, 1, 1), width=0.0625,
                                         output_stride=16), 64)
  assert out['layer4'].shape == (1, 4, 4, 128)
  assert variables['params']['conv1']['kernel'].shape == (7, 7, 3, 4)


def test_bfloat16_activations_float32_parameters():
  for module in (vgg.VGG16(width=0.0625, dtype=jnp.bfloat16),
                 resnet.ResNet(stage_sizes=(1, 1, 1, 1), width=0.0625, dtype=jnp.bfloat16)):
    variables, out = _shapes(module, 32)
    assert {x.dtype for x in jax.tree.leaves(variables)} == {np.dtype('float32')}
    assert {x.dtype for x in jax.tree.leaves(out)} == {np.dtype(jnp.bfloat16)}
