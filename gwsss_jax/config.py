"""The one definition of every configuration key, with the paper's defaults.

`configs/*.py` start from `base_config()` and override what differs. Derived values are
`FieldReference`s (`config.get_ref`) so that an override on the command line propagates:
`--config.data.num_classes=80` changes the segmentation head too.

`validate(config)` checks values that the type system of ml-collections cannot (ranges,
enumerations) and raises `UserError` naming the key.
"""

from typing import Optional

import ml_collections

from gwsss_jax.cams.pseudo import CAM_NORMS
from gwsss_jax.common.errors import UserError
from gwsss_jax.data.sampler import RULES as GROUP_RULES
from gwsss_jax.data.normalization import NORMALIZATIONS
from gwsss_jax.models import hub

STAGES = ('check_data', 'train_cls', 'export_cams', 'pseudo_labels', 'eval_cams', 'train_seg',
          'eval_seg')
DATASETS = ('voc', 'coco', 'msrc', 'synthetic', 'tfds_voc', 'tfds_coco')
BACKBONES = ('vgg16', 'resnet101')
VARIANTS = ('paper', 'release')
OAA_MEMBERS = ('anchor', 'all')
RESIZE_MODES = ('shorter_side', 'square')
ANCHOR_ORDERS = ('shuffle', 'list')
SEG_MODELS = ('deeplab_v2_resnet101', 'deeplab_largefov_vgg16')
CRF_IMPLS = ('auto', 'reference', 'jax')
LOADERS = ('tf', 'numpy')

# Keys renamed so that their names say what they mean: old key -> (new key, what else changed).
# Each entry point refuses the old name with an error naming the new one (`renamed_message`):
# `--config.<old>` flags (gwsss_jax.common.cli), config files (`validate`), sweep files and
# `--set` (gwsss_jax.sweep); stage records written before the rename are read under the new
# names (`current_names`). docs/training.md lists them for users.
RENAMED = {
    'model.drop_rate': (
        'model.importance_prob',
        "the probability of Eq. (10)'s importance-map branch (delta_r) in both variants: the "
        "same value under model.variant='paper', 1 - the old value under 'release'"),
    'model.num_steps': ('model.graph_steps', 'the rounds T of message passing'),
    'train.backbone_bias_mult': ('train.backbone_bias_lr_mult', ''),
    'train.new_mult': ('train.new_lr_mult', ''),
    'train.new_bias_mult': ('train.new_bias_lr_mult', 'by default 2 x train.new_lr_mult'),
    'seg.head_lr_mult': (
        'seg.new_lr_mult',
        'the head biases now follow seg.new_bias_lr_mult, by default 2 x seg.new_lr_mult'),
}


def input_size(config) -> int:
  """Side of the square classifier input: `data.crop_size`, or `data.resize` without a crop.

  Here rather than in the input pipeline (which re-exports it) so that the training steps get
  it without importing TensorFlow.
  """
  return config.data.crop_size or config.data.resize


def base_config() -> ml_collections.ConfigDict:
  """Paper defaults for PASCAL VOC 2012 (VGG16 classifier, K=4, T=3; DeepLab-v2 ResNet-101)."""
  c = ml_collections.ConfigDict()
  c.stages = ','.join(STAGES)
  c.seed = 0

  # --- data -------------------------------------------------------------------------
  c.data = d = ml_collections.ConfigDict()
  d.name = 'voc'               # one of DATASETS
  d.root = ''                  # VOCdevkit/VOC2012, COCO root, or the built-in dataset dir
  d.train_split = 'train_aug'  # image list of the classifier and of pseudo labels
  d.val_split = 'val'          # segmentation evaluation
  d.label_list = ''            # `name c1 c2 ...` of the train split; '' = <root>/ImageSets/Segmentation/<split>_cls.txt, else from masks
  d.saliency_dir = ''          # saliency maps (DSS) <name>.png, absolute or under root; '' = CAM background cue
  d.tfds_data_dir = ''         # for tfds_* sources
  d.num_classes = 20           # without background
  # Classifier input. Paper: 224 x 224 (its only statement). Default: the shorter side resized
  # to `resize`, a random `crop_size` crop, colour jitter and a random flip. The authors' release
  # (configs/release.py): a `resize` x `resize` square (aspect ratio not kept), colour jitter,
  # no crop (its crop-size argument is never used) and no flip.
  d.resize_mode = 'shorter_side'  # 'shorter_side' or 'square' (both sides to `resize`)
  d.resize = 256
  d.crop_size = 224            # random crop side; 0 = no crop (needs resize_mode='square')
  d.color_jitter = (0.3, 0.3, 0.3, 0.1)  # brightness, contrast, saturation, hue
  d.flip = True                # random horizontal flip
  d.normalization = 'auto'     # 'auto' (from the weights), 'imagenet_rgb', 'caffe_bgr'
  d.skip_bad = False
  d.loader = 'tf'              # input pipeline: 'tf' (tf.data) or 'numpy' (no TensorFlow needed)
  d.num_threads = 0            # the numpy loader's threads; 0 = one per core
  d.deterministic = True       # tf.data's element order (the numpy loader is always in order)
  d.prefetch = 2               # batches loaded ahead
  d.cache_dir = ''             # masks cache; '' = <root>/masks_cache_<split> (COCO), <workdir>/cache (MSRC)
  d.msrc_labels = 'voc'        # MSRC label space: 'voc' = 12 VOC classes (person = face + body)
  # The built-in dataset (data.name='synthetic'), generated into <workdir>/data when root is ''.
  d.synthetic = s = ml_collections.ConfigDict()
  s.num_train = 600
  s.num_val = 200
  s.size = 128
  s.seed = 0                   # the dataset's own seed: `seed` (training) leaves the data alone

  # --- the group-wise classification network ----------------------------------------
  c.model = m = ml_collections.ConfigDict()
  m.variant = 'paper'          # 'paper' (equations) or 'release' (the authors' code)
  m.backbone = 'vgg16'          # the paper's classifier in every row; 'resnet101' is an extension
  m.width = 1.0                # channel multiplier (tests, CPU demo)
  m.output_stride = 8          # ResNet-101: 8 or 16
  m.freeze_bn = True           # ResNet-101: BatchNorm statistics frozen
  m.num_nodes = 4              # K: images per group
  m.graph_steps = 3            # T: message-passing rounds of the graph (not SGD steps)
  m.reduction = 4              # d: low-rank ratio of Eq. (5)
  m.node_dim = 512             # C of the paper variant (embedding after the extra convs)
  # The paper variant's three extra convs start He-normal with zero biases ('he'), or as the
  # release's do ('release': N(0, 0.01) weights, PyTorch's default biases), for ablations.
  m.extra_conv_init = 'he'
  m.gru_kernel = 3             # ConvGRU kernel (release: 1)
  m.graph_dropout = True
  # delta_r of Eq. (10): graph dropout takes the importance map sigmoid(o) with this probability
  # and the drop mask otherwise, per node and round (both variants; the release's own
  # `--drop_rate` is the drop mask's probability, 1 - this: configs/release.py).
  m.importance_prob = 0.8
  m.drop_threshold = 0.7       # delta_d of Eq. (10)
  m.drop_mask = 'binary'       # paper variant's drop branch: 'binary' (ADL, release) or 'eq10'
  m.drop_output = 'eq11'       # paper variant: Eq. (11)'s h * s, or 'average' (h * s + h) / 2
  # Paper variant, ablations toward the release's graph (with drop_output and extra_conv_init):
  # the self-edge message (Eq. 6), and messages only between images that share a class
  # ('labels') or between every pair ('all').
  m.self_edge = True
  m.edge_mask = 'labels'
  m.message_fusion = 'sum'     # Eq. (8)'s sum, or 'gated_conv' (the release's fusion)
  m.loss_lambda = 0.4          # lambda of Eq. (12)
  m.dtype = 'float32'          # activations: float32 or bfloat16
  m.pretrained = ''            # converted weights directory, or a name: docs/weights.md

  # --- classifier training (train_cls) ----------------------------------------------
  c.train = t = ml_collections.ConfigDict()
  t.batch_size = 1             # groups per step, global (split over devices)
  t.num_epochs = 15
  t.max_steps = -1             # > 0 stops early (tests, benchmarks)
  # Every image anchors this many groups per epoch: K = 1 with R = K' sees as many images per
  # epoch (and per step, with R times the batch) as groups of K', over as many OAA epochs.
  t.repeats_per_epoch = 1
  # Learning rates as multiples of base_lr, the rate of the pretrained backbone's weights; the
  # new layers are all the others. `seg` has the same keys. Biases train at twice their
  # weights' rate (Caffe's lr_mult 1/2 and 10/20) unless their key is set.
  t.base_lr = 1e-3             # backbone weights
  t.backbone_bias_lr_mult = 2.0  # backbone biases: 2e-3
  t.new_lr_mult = 10.0         # new layers' weights: 1e-2
  t.new_bias_lr_mult = t.get_ref('new_lr_mult') * 2  # new layers' biases: 2e-2
  # The graph's layers (the `graph` submodule: co-attention, ConvGRU, fusion) are new layers.
  # Unset (None), they train at the new layers' rates; `graph_lr_mult` gives them a rate of
  # their own, their biases twice it unless `graph_bias_lr_mult` is set (train.optim).
  t.graph_lr_mult = ml_collections.config_dict.placeholder(float)
  t.graph_bias_lr_mult = ml_collections.config_dict.placeholder(float)
  t.momentum = 0.9
  t.nesterov = True
  t.weight_decay = 5e-4
  t.decay_every_epochs = 5
  t.decay_factor = 0.1
  t.log_every_steps = 50
  t.checkpoint_every_steps = 500
  t.max_to_keep = 3            # classifier checkpoints kept (the newest)
  t.eval_every_epochs = 1      # held-out mAP/F1
  t.eval_resolution = 'train'  # held-out images: 'train' (data.resize, centre square) or 'full'
  t.profile_steps = 0          # > 0 traces that many steps with jax.profiler
  t.group_rule = 'greedy'      # 'greedy' (paper), 'release' or 'balanced' (docs/data.md)
  t.anchor_order = 'shuffle'   # groups of an epoch: 'shuffle' (a permutation), 'list' (release)
  # An ablation of the grouping, not of the graph: the epoch's groups drawn by group_rule, then
  # the members of each round's groups shuffled among them (each image keeps its number of
  # appearances, the groups no longer gather images that share a class; adjacency recomputed
  # from the labels).
  t.shuffle_members = False

  c.parallel = p = ml_collections.ConfigDict()
  p.impl = 'shard_map'         # 'shard_map' or 'pmap'

  # --- CAMs and pseudo labels -------------------------------------------------------
  c.cams = k = ml_collections.ConfigDict()
  k.method = 'oaa'             # 'oaa' (accumulated in train_cls) or 'group_inference'
  k.source = 'ensemble'        # 'ensemble', 'graph' or 'intermediate'
  k.prob_threshold = 0.1       # OAA: skip a class while its probability is below
  # OAA ("following OAA", the paper): the defaults are OAA's schedule, which the release keeps.
  # Whose maps a step accumulates: 'anchor' = item 0 of each group, so every image gets one
  # update per epoch (its own anchor turn); 'all' = every member, so images often chosen as
  # partners get more max-updates and their maps spread.
  k.oaa_members = 'anchor'
  k.oaa_first_epoch = 1        # OAA: first epoch (0-based) that accumulates (OAA: `epoch > 0`)
  k.oaa_fill_last_epoch = True  # OAA: the last epoch writes missing maps whatever the probability
  # How many of each epoch's `train.repeats_per_epoch` rounds of groups feed OAA (0: all). With
  # a single-image baseline that repeats its images (K = 1, R rounds), 1 gives each image one
  # update per epoch, as 'anchor' gives the group model: the matched comparison.
  k.oaa_rounds = 0
  # OAA: accumulate the graph, intermediate and ensemble readouts in one run (False: cams.source
  # only), so that export_cams can write any of them (Table 3's readout rows) from one store.
  k.oaa_all_readouts = False
  k.scales = (1.0, 0.5, 1.5, 2.0)
  k.flip = True
  k.batch_size = 1             # groups per step in group inference
  k.bg_threshold = 0.2         # background score without saliency (IRNet style)
  k.bg_sweep = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 ... 0.95
  k.save_png = False
  k.crf = False                # dense CRF on the pseudo labels (implementation: crf.impl)
  # IRNet's crf_inference_label: unaries from the label map (gt_prob), Gaussian sxy=3 compat=3,
  # bilateral sxy=50 srgb=5 compat=10, 10 iterations.
  k.crf_params = ml_collections.ConfigDict(dict(
      iterations=10, pos_xy_std=3.0, pos_w=3.0, bi_xy_std=50.0, bi_rgb_std=5.0, bi_w=10.0,
      gt_prob=0.7))
  k.num_vis = 8                # picture grids written to <workdir>/vis

  c.pseudo = q = ml_collections.ConfigDict()
  q.conflict_threshold = 0.9   # more than one score above -> ignore
  q.saliency_bg_threshold = 32  # background but saliency >= this -> ignore
  q.fg_ignore_threshold = 0.8  # background but some class map above -> ignore
  q.min_fg_fraction = 0.01     # less valid foreground -> whole image ignored
  q.cam_norm = 'max'           # class maps to 0..1: 'max' (/ max) or 'minmax' (release)
  q.num_workers = 0            # 0 = all CPU cores

  # --- segmentation (train_seg, eval_seg) -------------------------------------------
  c.seg = g = ml_collections.ConfigDict()
  # The paper's Table 1 / Table 3 "ResNet-101" rows (68.2 val) use DeepLab-v2 ResNet-101; its
  # "VGG16" row (63.3) 'deeplab_largefov_vgg16'. The classifier is VGG16 in both.
  g.model = 'deeplab_v2_resnet101'
  g.width = 1.0
  g.output_stride = 8
  g.pretrained = ''            # as model.pretrained (e.g. 'deeplab:coco_init')
  g.oracle = False             # train on ground-truth masks instead of pseudo labels
  g.batch_size = 10
  g.crop_size = 321
  g.scale_range = (0.5, 1.5)
  g.num_steps = 20000
  # Learning rates as in `train`: base_lr for the pretrained trunk's weights, multiples of it
  # for the rest; the new layers are the head (ASPP, or LargeFOV's fc6-fc8 less those that
  # seg.pretrained initialises).
  g.base_lr = 2.5e-4           # trunk weights
  g.backbone_bias_lr_mult = 2.0  # trunk biases
  g.new_lr_mult = 10.0         # new layers' weights
  g.new_bias_lr_mult = g.get_ref('new_lr_mult') * 2  # new layers' biases
  g.head_warmup_steps = 0      # backbone held still while the new head trains for this many steps
  g.momentum = 0.9
  g.weight_decay = 5e-4
  g.poly_power = 0.9
  g.msc = False                # DeepLab-v2 multi-scale loss (1.0, 0.75, 0.5, max)
  g.eval_scales = (1.0,)
  g.eval_flip = False
  g.eval_batch_size = 1
  g.crf = False                # dense CRF on the predictions (implementation: crf.impl)
  # DeepLab-v2's published CRF for ResNet-101 on VOC (its LargeFOV VGG16: bi_w=4,
  # bi_xy_std=121, bi_rgb_std=5, pos_w=3, pos_xy_std=3); unaries -log(softmax).
  g.crf_params = ml_collections.ConfigDict(dict(
      iterations=10, pos_xy_std=1.0, pos_w=3.0, bi_xy_std=67.0, bi_rgb_std=3.0, bi_w=4.0))
  g.log_every_steps = 50
  g.checkpoint_every_steps = 1000
  g.max_to_keep = 3            # segmentation checkpoints kept (the newest)
  g.dtype = 'float32'
  # train_seg stops when fewer pseudo-label pixels of the training set than this are labelled
  # (not 255): DeepLab would learn nothing (0 = no check).
  g.min_labelled_fraction = 0.01
  g.num_classes = c.data.get_ref('num_classes') + 1  # with background

  # --- dense CRF (cams.crf, seg.crf) ------------------------------------------------
  c.crf = r = ml_collections.ConfigDict()
  # 'reference' (pydensecrf2, CPU worker pool), 'jax' (on device) or 'auto': 'jax' on an
  # accelerator; on a CPU the reference if pydensecrf2 imports (faster there), else 'jax'.
  r.impl = 'auto'
  r.batch_size = 2             # impl='jax': images per call, split over the local devices
  return c


def renamed_message(key: str, flag: bool = False) -> Optional[str]:
  """The error for a renamed `key` ('model.drop_rate'), naming the new key; None for any other
  key. `flag`: name both as `--config.` flags."""
  if key not in RENAMED:
    return None
  new, note = RENAMED[key]
  prefix = '--config.' if flag else 'config.'
  return (f'{prefix}{key} was renamed {prefix}{new}' + (f' ({note})' if note else '')
          + '; docs/training.md lists the renamed keys')


def check_not_renamed(key: str, where: str = '') -> None:
  """UserError when the dotted `key` is an old name (`where`: who gave it, e.g. a file)."""
  message = renamed_message(key)
  if message is not None:
    raise UserError((f'{where}: ' if where else '') + message)


def current_names(flat: dict) -> dict:
  """A flat {key: value} of config keys (a stage record) with the old names of `RENAMED` under
  the new ones, the values converted where the meaning changed."""
  out = {}
  for key, value in flat.items():
    if key == 'model.drop_rate' and flat.get('model.variant') == 'release':
      value = round(1.0 - value, 12)  # the release variant's old key was the drop probability
    out[RENAMED[key][0] if key in RENAMED else key] = value
  return out


def lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config.lock()
  return config


def _check(cond: bool, key: str, value, why: str):
  if not cond:
    raise UserError(f'config.{key}={value!r}: {why}')


def _check_choice(key: str, value, choices, why: str = '') -> None:
  """`value` must be one of `choices`; the error lists them (after `why`, if given)."""
  _check(value in choices, key, value,
         f'{why + "; " if why else ""}choose from {", ".join(map(repr, choices))}')


def leaf_keys(config, prefix: str = ''):
  """The dotted names of every value of `config` ('model.num_nodes', ...)."""
  for name, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from leaf_keys(value, f'{prefix}{name}.')
    else:
      yield prefix + name


def check_renamed_keys(config: ml_collections.ConfigDict) -> None:
  """UserError naming the new key when `config` holds an old name of `RENAMED`: a config file
  that still sets one adds a field of that name (config files are locked after they return)."""
  for key in leaf_keys(config):
    check_not_renamed(key)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises UserError naming the first invalid key."""
  check_renamed_keys(config)
  stages = [s.strip() for s in config.stages.split(',') if s.strip()]
  for s in stages:
    _check(s in STAGES, 'stages', config.stages,
           f'unknown stage {s!r}; choose from {", ".join(map(repr, STAGES))}')
  _check(bool(stages), 'stages', config.stages, 'no stage given')
  _check_choice('data.name', config.data.name, DATASETS)
  _check(config.data.num_classes >= 1, 'data.num_classes', config.data.num_classes, 'must be >= 1')
  d = config.data
  _check_choice('data.resize_mode', d.resize_mode, RESIZE_MODES)
  _check(d.resize >= 16, 'data.resize', d.resize, 'must be >= 16')
  _check_choice('data.loader', d.loader, LOADERS)
  _check(d.num_threads >= 0, 'data.num_threads', d.num_threads, 'must be >= 0 (0: one per core)')
  _check(d.prefetch >= 0, 'data.prefetch', d.prefetch, 'must be >= 0')
  _check(d.crop_size == 0 or d.crop_size >= 16, 'data.crop_size', d.crop_size,
         'must be 0 (no crop) or >= 16')
  _check(d.crop_size > 0 or d.resize_mode == 'square', 'data.crop_size', d.crop_size,
         "0 (no crop) needs data.resize_mode='square': images of other shapes do not batch")
  _check(d.resize_mode != 'square' or d.crop_size <= d.resize, 'data.crop_size', d.crop_size,
         f'larger than the square data.resize={d.resize}')
  if config.data.name == 'msrc':
    from gwsss_jax.data import msrc  # pylint: disable=g-import-not-at-top
    _check_choice('data.msrc_labels', config.data.msrc_labels, tuple(msrc.LABEL_SPACES))
    size = len(msrc.LABEL_SPACES[config.data.msrc_labels])
    _check(config.data.num_classes == size, 'data.num_classes', config.data.num_classes,
           f'MSRC label space {config.data.msrc_labels!r} has {size} classes')
  normalizations = ('auto',) + tuple(NORMALIZATIONS)
  _check_choice('data.normalization', config.data.normalization, normalizations)
  m = config.model
  _check_choice('model.variant', m.variant, VARIANTS)
  _check_choice('model.backbone', m.backbone, BACKBONES, 'unknown backbone')
  _check(m.num_nodes >= 1, 'model.num_nodes', m.num_nodes, 'must be >= 1')
  _check(m.graph_steps >= 0, 'model.graph_steps', m.graph_steps, 'must be >= 0')
  _check(m.reduction >= 1, 'model.reduction', m.reduction, 'must be >= 1')
  from gwsss_jax.models.graph import DROP_MASKS, DROP_OUTPUTS, EDGE_MASKS, MESSAGE_FUSIONS  # pylint: disable=g-import-not-at-top
  _check_choice('model.drop_mask', m.drop_mask, DROP_MASKS)
  _check_choice('model.edge_mask', m.edge_mask, EDGE_MASKS)
  _check_choice('model.message_fusion', m.message_fusion, MESSAGE_FUSIONS)
  _check_choice('model.drop_output', m.drop_output, DROP_OUTPUTS)
  from gwsss_jax.models.classifier import EXTRA_CONV_INITS  # pylint: disable=g-import-not-at-top
  _check_choice('model.extra_conv_init', m.extra_conv_init, EXTRA_CONV_INITS)
  _check(0.0 <= m.importance_prob <= 1.0, 'model.importance_prob', m.importance_prob,
         'must lie in [0, 1]')
  _check(0.0 <= m.drop_threshold <= 1.0, 'model.drop_threshold', m.drop_threshold,
         'must lie in [0, 1]')
  _check(m.width > 0, 'model.width', m.width, 'must be > 0')
  _check(m.output_stride in (8, 16), 'model.output_stride', m.output_stride, 'must be 8 or 16')
  _check(m.gru_kernel >= 1 and m.gru_kernel % 2 == 1, 'model.gru_kernel', m.gru_kernel,
         'must be a positive odd number')
  _check_choice('model.dtype', m.dtype, ('float32', 'bfloat16'))
  _check(m.loss_lambda >= 0, 'model.loss_lambda', m.loss_lambda, 'must be >= 0')
  if m.variant == 'release':
    _check(m.num_nodes == 3, 'model.num_nodes', m.num_nodes,
           "the release variant hard-codes groups of 3 (use model.variant='paper' for other K)")
    _check(m.self_edge, 'model.self_edge', m.self_edge,
           'applies to the paper variant only (the release variant has no self-edge)')
    _check(m.edge_mask == 'labels', 'model.edge_mask', m.edge_mask,
           'applies to the paper variant only (the release variant links every pair)')
    _check(m.message_fusion == 'sum', 'model.message_fusion', m.message_fusion,
           'applies to the paper variant only (the release variant always fuses its own way)')
    _check(m.drop_output == 'eq11', 'model.drop_output', m.drop_output,
           'applies to the paper variant only (the release variant always averages)')
    _check(m.extra_conv_init == 'he', 'model.extra_conv_init', m.extra_conv_init,
           "applies to the paper variant only (the release variant always starts as the "
           "release's)")
  t = config.train
  _check(t.batch_size >= 1, 'train.batch_size', t.batch_size, 'must be >= 1')
  _check(t.num_epochs >= 1, 'train.num_epochs', t.num_epochs, 'must be >= 1')
  _check(t.repeats_per_epoch >= 1, 'train.repeats_per_epoch', t.repeats_per_epoch,
         'must be >= 1')
  _check(t.base_lr > 0, 'train.base_lr', t.base_lr, 'must be > 0')
  _check_lr_mults(t, 'train')
  _check(t.max_to_keep >= 1, 'train.max_to_keep', t.max_to_keep, 'must be >= 1')
  _check_choice('train.eval_resolution', t.eval_resolution, ('train', 'full'))
  _check_choice('train.group_rule', t.group_rule, GROUP_RULES)
  _check_choice('train.anchor_order', t.anchor_order, ANCHOR_ORDERS)
  _check_choice('parallel.impl', config.parallel.impl, ('shard_map', 'pmap'))
  k = config.cams
  _check_choice('cams.method', k.method, ('oaa', 'group_inference'))
  _check_choice('cams.source', k.source, ('ensemble', 'graph', 'intermediate'))
  _check_choice('cams.oaa_members', k.oaa_members, OAA_MEMBERS)
  _check(k.oaa_first_epoch >= 0 and (k.method != 'oaa' or k.oaa_first_epoch < t.num_epochs),
         'cams.oaa_first_epoch', k.oaa_first_epoch,
         f'must lie in [0, train.num_epochs={t.num_epochs}): no epoch would accumulate OAA maps')
  _check(0 <= k.oaa_rounds <= t.repeats_per_epoch, 'cams.oaa_rounds', k.oaa_rounds,
         f'must lie in [0, train.repeats_per_epoch={t.repeats_per_epoch}] (0: every round)')
  _check(0.0 <= k.bg_threshold <= 1.0, 'cams.bg_threshold', k.bg_threshold, 'must lie in [0, 1]')
  _check(len(k.scales) >= 1 and all(s > 0 for s in k.scales), 'cams.scales', k.scales,
         'needs at least one positive scale')
  q = config.pseudo
  _check(0.0 <= q.conflict_threshold <= 1.0, 'pseudo.conflict_threshold', q.conflict_threshold,
         'must lie in [0, 1]')
  _check_choice('pseudo.cam_norm', q.cam_norm, CAM_NORMS)
  _check(0.0 <= q.min_fg_fraction <= 1.0, 'pseudo.min_fg_fraction', q.min_fg_fraction,
         'must lie in [0, 1]')
  _check_crf_params(k.crf_params, 'cams.crf_params')
  _check(0.0 < k.crf_params.gt_prob < 1.0, 'cams.crf_params.gt_prob', k.crf_params.gt_prob,
         'must lie in (0, 1)')
  _check_choice('crf.impl', config.crf.impl, CRF_IMPLS)
  _check(config.crf.batch_size >= 1, 'crf.batch_size', config.crf.batch_size, 'must be >= 1')
  g = config.seg
  _check_crf_params(g.crf_params, 'seg.crf_params')
  for key, value in (('model.pretrained', m.pretrained), ('seg.pretrained', g.pretrained)):
    hub.check_name(value, key)  # an unknown name fails here; a download happens at first use
  _check_choice('seg.model', g.model, SEG_MODELS)
  _check(g.batch_size >= 1, 'seg.batch_size', g.batch_size, 'must be >= 1')
  _check(g.num_steps >= 1, 'seg.num_steps', g.num_steps, 'must be >= 1')
  _check(g.base_lr > 0, 'seg.base_lr', g.base_lr, 'must be > 0')
  _check_lr_mults(g, 'seg')
  _check(g.max_to_keep >= 1, 'seg.max_to_keep', g.max_to_keep, 'must be >= 1')
  _check(0 <= g.head_warmup_steps < g.num_steps, 'seg.head_warmup_steps', g.head_warmup_steps,
         f'must be >= 0 and below seg.num_steps={g.num_steps}')
  _check(0.0 <= g.min_labelled_fraction <= 1.0, 'seg.min_labelled_fraction',
         g.min_labelled_fraction, 'must lie in [0, 1]')
  _check(g.output_stride in (8, 16), 'seg.output_stride', g.output_stride, 'must be 8 or 16')
  _check(len(g.scale_range) == 2 and 0 < g.scale_range[0] <= g.scale_range[1], 'seg.scale_range',
         g.scale_range, 'must be (low, high) with 0 < low <= high')


def _check_lr_mults(section, name: str) -> None:
  keys = ('backbone_bias_lr_mult', 'new_lr_mult', 'new_bias_lr_mult', 'graph_lr_mult',
          'graph_bias_lr_mult')
  for key in (k for k in keys if section.get(k) is not None):
    _check(section[key] >= 0, f'{name}.{key}', section[key], 'must be >= 0')


def _check_crf_params(c, key: str) -> None:
  _check(c.iterations >= 0, f'{key}.iterations', c.iterations, 'must be >= 0')
  for name in ('pos_xy_std', 'bi_xy_std', 'bi_rgb_std'):
    _check(c[name] > 0, f'{key}.{name}', c[name], 'must be > 0')
  for name in ('pos_w', 'bi_w'):
    _check(c[name] >= 0, f'{key}.{name}', c[name], 'must be >= 0')


def stage_list(config) -> list[str]:
  """The configured stages in pipeline order."""
  wanted = {s.strip() for s in config.stages.split(',') if s.strip()}
  return [s for s in STAGES if s in wanted]
