"""Benchmarks of the pipeline's compute, one JSON line per figure.

  python -m gwsss_jax.bench --config=configs/voc.py [--only=train_cls,graph_share,...] [--quick]

Groups (`--only`, default all): `train_cls` (classifier training step: images/s, step time,
compile time, FLOPs and achieved FLOP/s against the device's peak, for each backbone of
`--backbones` and K of `--ks` at `data.crop_size`), `graph_share` (the graph's share of the
step for K in `--graph_ks`: the step with `model.num_steps` message-passing rounds against the
same step with none), `input_pipeline` (groups/s of `input_pipeline.train_iterator`),
`cam_export` (the group-inference forward of `export_cams` over `cams.scales` and flips),
`train_seg` (DeepLab training step). After each group, the process's peak host memory
(`getrusage` maxrss: a running maximum over the whole process, so run one group per process for
a per-group figure) and, where the runtime reports it, the device's peak memory.

Each line is `{"name", "value", "unit", ...context}`; a figure that cannot be measured (no data
for the input pipeline, an unknown peak) gets `"value": null` and a `"note"`. `--quick` shrinks
widths and sizes so that every group runs in seconds (the smoke test); its figures say nothing
about speed. Timings are the median of `--steps` steps after `--warmup` steps, on
`--num_devices` devices (the global batch is the configured one rounded up to a multiple).

On XLA:CPU the command first takes convolutions off YNNPACK (`common.xla_flags.configure_cpu`,
which makes training there several times faster); `--ynn_conv` measures jaxlib's default
instead. Each line records the XLA_FLAGS it ran with.

The CPU peak is an estimate: cores x clock x FP32 FLOPs per cycle (two FMA units of 8 lanes
with AVX2, 16 with AVX-512), from `lscpu`/`/proc/cpuinfo` (in a VM that is often the base clock,
so a CPU that boosts can exceed it); accelerators are looked up by
`device_kind` in `ACCELERATOR_PEAKS` (dense FP32 and BF16 figures of the vendors' data sheets).
"""

import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from gwsss_jax.common import xla_flags
from gwsss_jax.common.errors import UserError

GROUPS = ('train_cls', 'graph_share', 'input_pipeline', 'cam_export', 'train_seg')

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/voc.py', 'Configuration file.')
_ONLY = flags.DEFINE_list('only', list(GROUPS), f'Figure groups to run, from {GROUPS}.')
_QUICK = flags.DEFINE_bool('quick', False, 'Tiny widths and sizes (smoke test; not a speed '
                           'figure).')
_BACKBONES = flags.DEFINE_list('backbones', ['vgg16', 'resnet101'], 'train_cls backbones.')
_KS = flags.DEFINE_list('ks', ['3', '4'], 'train_cls group sizes K.')
_GRAPH_KS = flags.DEFINE_list('graph_ks', [str(k) for k in range(2, 9)],
                              'graph_share group sizes K (2,3 by default with --quick).')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps (median reported).')
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed steps after compilation.')
_NUM_DEVICES = flags.DEFINE_integer('num_devices', 1, 'Devices to run on (0 = all).')
_PIPELINE_BATCHES = flags.DEFINE_integer('pipeline_batches', 20,
                                         'Batches timed by input_pipeline.')
_YNN_CONV = flags.DEFINE_bool('ynn_conv', False, 'Keep XLA:CPU convolutions on YNNPACK (the '
                               "jaxlib default; see gwsss_jax.common.xla_flags) instead of "
                               'Eigen.')
_WORKDIR = flags.DEFINE_string('workdir', '', 'Where the built-in dataset is generated '
                               "(data.name='synthetic' with an empty data.root); '' = a "
                               'temporary directory.')

# Per-device dense peaks in FLOP/s, (float32, bfloat16), keyed by a substring of
# `device.device_kind` (first match wins). TPU v2/v3 devices are single cores, v4+ chips.
ACCELERATOR_PEAKS = (
    ('H200', (67e12, 989e12)),
    ('H100 PCIe', (51e12, 756e12)),
    ('H100', (67e12, 989e12)),
    ('A100', (19.5e12, 312e12)),
    ('A10G', (31.2e12, 125e12)),
    ('L4', (30.3e12, 121e12)),
    ('V100', (15.7e12, 125e12)),
    ('T4', (8.1e12, 65e12)),
    ('TPU v2', (None, 22.5e12)),
    ('TPU v3', (None, 61.5e12)),
    ('TPU v4', (None, 275e12)),
    ('TPU v5 lite', (None, 197e12)),
    ('TPU v5e', (None, 197e12)),
    ('TPU v5p', (None, 459e12)),
    ('TPU v5', (None, 459e12)),
    ('TPU v6 lite', (None, 918e12)),
    ('TPU v6e', (None, 918e12)),
)


def emit(name: str, value, unit: str, **context) -> dict:
  """Prints one figure as a JSON line (stdout) and returns it."""
  record = {'name': name, 'value': value, 'unit': unit, **context}
  print(json.dumps(record, default=_jsonable), flush=True)
  return record


def _jsonable(x):
  if isinstance(x, (np.generic,)):
    return x.item()
  return str(x)


def cpu_peak_flops(num_cores: Optional[int] = None) -> tuple[Optional[float], str]:
  """Estimated FP32 peak of this host's CPU: (FLOP/s or None, how it was estimated)."""
  info = ''
  try:
    info = subprocess.run(['lscpu'], capture_output=True, text=True, timeout=10).stdout
  except (OSError, subprocess.SubprocessError):
    pass
  flag_text = re.search(r'^Flags:\s*(.*)$', info, re.M)
  flag_set = set(flag_text.group(1).split()) if flag_text else set()
  mhz = None
  for pattern in (r'^CPU max MHz:\s*([\d.]+)', r'^CPU MHz:\s*([\d.]+)'):
    m = re.search(pattern, info, re.M)
    if m:
      mhz = float(m.group(1))
      break
  if not flag_set or mhz is None:
    try:
      with open('/proc/cpuinfo') as f:
        cpuinfo = f.read()
      if not flag_set:
        m = re.search(r'^flags\s*:\s*(.*)$', cpuinfo, re.M)
        flag_set = set(m.group(1).split()) if m else set()
      if mhz is None:
        m = re.search(r'^cpu MHz\s*:\s*([\d.]+)', cpuinfo, re.M)
        mhz = float(m.group(1)) if m else None
    except OSError:
      pass
  cores = num_cores or os.cpu_count() or 1
  if mhz is None:
    return None, 'unknown clock'
  if 'avx512f' in flag_set:
    per_cycle, isa = 64, 'AVX-512 FMA x2'
  elif 'fma' in flag_set and 'avx2' in flag_set:
    per_cycle, isa = 32, 'AVX2 FMA x2'
  elif 'avx' in flag_set:
    per_cycle, isa = 16, 'AVX'
  else:
    per_cycle, isa = 8, 'SSE'
  peak = cores * mhz * 1e6 * per_cycle
  return peak, (f'estimate: {cores} cores x {mhz / 1000:.2f} GHz x {per_cycle} FP32 '
                f'FLOPs/cycle ({isa})')


def device_peak_flops(device, dtype: str) -> tuple[Optional[float], str]:
  """(peak FLOP/s of one device for `dtype`, source) or (None, why)."""
  if device.platform == 'cpu':
    return cpu_peak_flops()
  kind = getattr(device, 'device_kind', '')
  for key, (fp32, bf16) in ACCELERATOR_PEAKS:
    if key.lower() in kind.lower():
      peak = bf16 if dtype == 'bfloat16' else fp32
      if peak is None:
        return None, f'{kind}: no FP32 peak listed (matmuls run in bf16 passes)'
      return peak, f'data sheet ({key}, dense {dtype})'
  return None, f'unknown device kind {kind!r}'


def cost_flops(compiled) -> Optional[float]:
  """FLOPs of one call of a compiled function, from XLA's cost analysis (None if absent)."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis or 'flops' not in analysis:
    return None
  return float(analysis['flops'])


def _block(tree):
  jax.tree.map(lambda x: x.block_until_ready() if hasattr(x, 'block_until_ready') else x, tree)
  return tree


def compile_and_time(fn, args: tuple, *, steps: int, warmup: int,
                     carry: Optional[Callable] = None) -> dict:
  """Lowers and compiles `fn` (a jitted/pmapped function) on `args`, then times calls.

  `carry(args, result) -> args` threads a train state from one call to the next (donated
  buffers cannot be reused). Returns {'compile_s', 'step_s' (median), 'step_all', 'flops'}.
  """
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  times = []
  for i in range(warmup + steps):
    t0 = time.perf_counter()
    result = _block(compiled(*args))
    elapsed = time.perf_counter() - t0
    if i >= warmup:
      times.append(elapsed)
    if carry is not None:
      args = carry(args, result)
  return {'compile_s': compile_s, 'step_s': statistics.median(times), 'step_all': times,
          'flops': cost_flops(compiled)}


def carry_state(args: tuple, result) -> tuple:
  """`compile_and_time`'s carry for a train step `(state, batch) -> (state, ...)`."""
  return (result[0],) + tuple(args[1:])


def memory_figures(group: str, context: dict) -> None:
  """Peak host memory of the process so far and, where reported, of the first device."""
  maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  emit('host_memory_peak', maxrss_kib / 1024**2, 'GiB', after=group,
       scope='process maximum so far (getrusage maxrss)', **context)
  stats = None
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  if stats and 'peak_bytes_in_use' in stats:
    emit('device_memory_peak', stats['peak_bytes_in_use'] / 1024**3, 'GiB', after=group,
         scope='device 0, process maximum so far', **context)


class Bench:
  """Holds the configuration, devices and shared context of one benchmark run."""

  def __init__(self, config, quick: bool, num_devices: int, steps: int, warmup: int):
    from gwsss_jax.train import parallel  # pylint: disable=g-import-not-at-top
    self.config = config
    self.quick = quick
    devices = jax.devices()
    self.devices = devices[:num_devices] if num_devices > 0 else devices
    self.mesh = parallel.make_mesh(self.devices)
    self.steps = steps
    self.warmup = warmup
    device = self.devices[0]
    self.context = {'device': f'{device.platform}:{getattr(device, "device_kind", "")}',
                    'num_devices': len(self.devices), 'jax': jax.__version__,
                    'date': time.strftime('%Y-%m-%d'), 'quick': quick,
                    'xla_flags': os.environ.get('XLA_FLAGS', '')}

  def global_batch(self, configured: int) -> int:
    n = len(self.devices)
    return -(-configured // n) * n

  def model_config(self, backbone: str, num_nodes: int, num_steps: Optional[int] = None):
    """A copy of the config for one classifier variant (shrunk when quick)."""
    c = self.config.copy_and_resolve_references()
    c.model.backbone = backbone
    c.model.num_nodes = num_nodes
    if num_steps is not None:
      c.model.num_steps = num_steps
    if self.quick:
      c.model.width = 0.0625
      c.model.node_dim = 16
      c.data.crop_size = 32
      c.model.num_steps = min(c.model.num_steps, 1)
    return c

  def flops_figures(self, prefix: str, flops, step_s: float, dtype: str, context: dict):
    if flops is None:
      emit(f'{prefix}.achieved_flops_per_s', None, 'FLOP/s', note='no XLA cost analysis',
           **context)
      return
    emit(f'{prefix}.flops_per_step', flops, 'FLOP', source='XLA cost_analysis (per device)',
         **context)
    peak, source = device_peak_flops(self.devices[0], dtype)
    achieved = flops / step_s
    emit(f'{prefix}.achieved_flops_per_s', achieved, 'FLOP/s', peak_flops_per_s=peak,
         fraction_of_peak=(achieved / peak) if peak else None, peak_source=source, **context)

  def matmul_ceiling(self, n: int = 2048):
    """The FLOP/s of one large float32 matmul: a practical ceiling next to the peak."""
    size = 256 if self.quick else n
    a = jax.device_put(jnp.ones((size, size), jnp.float32), self.devices[0])
    timing = compile_and_time(jax.jit(jnp.dot), (a, a), steps=self.steps, warmup=self.warmup)
    peak, source = device_peak_flops(self.devices[0], 'float32')
    achieved = 2.0 * size**3 / timing['step_s']
    emit('device.matmul_flops_per_s', achieved, 'FLOP/s', matmul=f'{size}x{size}x{size} float32',
         peak_flops_per_s=peak, fraction_of_peak=(achieved / peak) if peak else None,
         peak_source=source, **self.context)

  # --- the classifier ----------------------------------------------------------------

  def classifier_step(self, config) -> dict:
    """Compiles and times `train_cls`'s data-parallel training step for `config`."""
    step, args, batch_size = self.build_classifier_step(config)
    timing = compile_and_time(step, args, steps=self.steps, warmup=self.warmup,
                              carry=carry_state)
    timing['batch'] = batch_size
    return timing

  def build_classifier_step(self, config) -> tuple:
    """`train_cls`'s data-parallel training step for `config`: (step, (state, batch), groups).

    `step(state, batch)` returns the new state first; its input state is donated, so thread
    it with `carry_state`.
    """
    from gwsss_jax.models import classifier  # pylint: disable=g-import-not-at-top
    from gwsss_jax.stages import train_cls  # pylint: disable=g-import-not-at-top
    from gwsss_jax.train import optim  # pylint: disable=g-import-not-at-top
    from gwsss_jax.train import parallel  # pylint: disable=g-import-not-at-top
    from gwsss_jax.train import trainer  # pylint: disable=g-import-not-at-top
    model = classifier.build_classifier(config.model, config.data.num_classes)
    variables = train_cls.init_variables(model, config, jax.random.key(config.seed))
    params, batch_stats = variables['params'], variables.get('batch_stats', {})
    tx, _ = optim.classifier_optimizer(config.train, params, batch_stats, config.model.freeze_bn,
                                       steps_per_epoch=1000)
    state = trainer.init_state(params, batch_stats, tx, config.seed)
    batch_size = self.global_batch(config.train.batch_size)
    dp = parallel.DataParallel('shard_map', self.mesh, batch_size)
    step = dp.compile(trainer.make_train_step(
        train_cls.make_loss_fn(model, config, with_cams=False), tx,
        update_batch_stats=bool(not config.model.freeze_bn and jax.tree.leaves(batch_stats))))
    batch = dp.shard_batch(self.classifier_batch(config, batch_size))
    return step, (dp.replicate(state), batch), batch_size

  def classifier_batch(self, config, batch_size: int) -> dict:
    k, size, num_classes = config.model.num_nodes, config.data.crop_size, config.data.num_classes
    rng = np.random.default_rng(0)
    labels = np.zeros((batch_size, k, num_classes), np.float32)
    labels[:, :, 0] = 1  # the group's common class
    labels[rng.random(labels.shape) < 0.1] = 1
    adjacency = (np.einsum('bkl,bjl->bkj', labels, labels) > 0).astype(np.float32)
    return {'images': rng.standard_normal((batch_size, k, size, size, 3), np.float32),
            'labels': labels, 'adjacency': adjacency}

  def train_cls(self):
    for backbone in _BACKBONES.value:
      for k in (int(v) for v in _KS.value):
        config = self.model_config(backbone, k)
        timing = self.classifier_step(config)
        ctx = dict(self.context, backbone=backbone, K=k, T=config.model.num_steps,
                   image_size=config.data.crop_size, width=config.model.width,
                   variant=config.model.variant, dtype=config.model.dtype,
                   batch_groups=timing['batch'])
        images = timing['batch'] * k
        emit('train_cls.images_per_s', images / timing['step_s'], 'images/s', **ctx)
        emit('train_cls.step_time', timing['step_s'], 's',
             all_steps_s=[round(t, 4) for t in timing['step_all']], **ctx)
        emit('train_cls.compile_time', timing['compile_s'], 's', **ctx)
        self.flops_figures('train_cls', timing['flops'], timing['step_s'], config.model.dtype,
                           ctx)

  def graph_share(self):
    backbone = self.config.model.backbone
    for k in (int(v) for v in _GRAPH_KS.value):
      with_graph = self.model_config(backbone, k)
      without = self.model_config(backbone, k, num_steps=0)
      full = self.classifier_step(with_graph)
      base = self.classifier_step(without)
      share = max(full['step_s'] - base['step_s'], 0.0) / full['step_s']
      flops_share = None
      if full['flops'] and base['flops']:
        flops_share = (full['flops'] - base['flops']) / full['flops']
      emit('graph_share', share, 'fraction of step time', **dict(
          self.context, backbone=backbone, K=k, T=with_graph.model.num_steps,
          image_size=with_graph.data.crop_size, width=with_graph.model.width,
          variant=with_graph.model.variant, step_time_s=full['step_s'],
          step_time_without_graph_s=base['step_s'], flops_share=flops_share))

  # --- input pipeline, CAM export, segmentation --------------------------------------

  def input_pipeline(self):
    import io as pyio  # pylint: disable=g-import-not-at-top
    import contextlib  # pylint: disable=g-import-not-at-top
    from gwsss_jax.data import datasets  # pylint: disable=g-import-not-at-top
    from gwsss_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
    config = self.config.copy_and_resolve_references()
    ctx = dict(self.context, dataset=config.data.name, K=config.model.num_nodes,
               image_size=config.data.crop_size, batch_groups=config.train.batch_size)
    try:
      with tempfile.TemporaryDirectory() as tmp:
        workdir = _WORKDIR.value or tmp
        if self.quick and config.data.name == 'synthetic' and not config.data.root:
          config.data.synthetic.num_train = 24
          config.data.synthetic.num_val = 4
          config.data.synthetic.size = 64
          config.data.crop_size = min(config.data.crop_size, 56)
          config.data.resize = min(config.data.resize, 64)
          ctx['image_size'] = config.data.crop_size
        datasets.prepare(config, workdir)
        batches = 3 if self.quick else _PIPELINE_BATCHES.value
        with contextlib.redirect_stdout(pyio.StringIO()):  # keep stdout JSON lines only
          rate = input_pipeline.benchmark(config, batches)
    except (UserError, OSError) as e:
      emit('input_pipeline.groups_per_s', None, 'groups/s', note=str(e), **ctx)
      return
    emit('input_pipeline.groups_per_s', rate, 'groups/s',
         threads=os.cpu_count(), **ctx)

  def cam_export(self):
    from gwsss_jax.cams import export  # pylint: disable=g-import-not-at-top
    from gwsss_jax.models import classifier  # pylint: disable=g-import-not-at-top
    from gwsss_jax.stages import train_cls  # pylint: disable=g-import-not-at-top
    from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
    from gwsss_jax.train import parallel  # pylint: disable=g-import-not-at-top
    config = self.model_config(self.config.model.backbone, self.config.model.num_nodes)
    model = classifier.build_classifier(config.model, config.data.num_classes)
    variables = train_cls.init_variables(model, config, jax.random.key(0))
    k, base = config.model.num_nodes, config.data.crop_size
    scales = tuple(config.cams.scales)
    sides = export.scale_sides(base, scales)
    side1 = export.scale_sides(base, (1.0,))[0]
    feature_hw = jax.eval_shape(
        lambda v: model.apply(v, jnp.zeros((1, k, side1, side1, 3)), jnp.ones((1, k, k)),
                              train=False)[1]['cam_graph'], variables).shape[2:4]
    batch = self.global_batch(config.cams.batch_size)
    sharded, replicated = NamedSharding(self.mesh, P(parallel.AXIS)), NamedSharding(self.mesh,
                                                                                     P())
    fn = jax.jit(export.make_group_cam_fn(model, bool(config.cams.flip), tuple(feature_hw)),
                 in_shardings=(replicated, sharded, sharded), out_shardings=sharded)
    rng = np.random.default_rng(0)
    images = [jax.device_put(rng.standard_normal((batch, k, s, s, 3), np.float32), sharded)
              for s in sides]
    adjacency = jax.device_put(np.ones((batch, k, k), np.float32), sharded)
    variables = jax.device_put(variables, replicated)
    timing = compile_and_time(fn, (variables, images, adjacency), steps=self.steps,
                              warmup=self.warmup)
    ctx = dict(self.context, backbone=config.model.backbone, K=k, image_size=base,
               scales=list(scales), flip=bool(config.cams.flip), width=config.model.width,
               batch_groups=batch, dtype=config.model.dtype)
    emit('cam_export.images_per_s', batch * k / timing['step_s'], 'images/s',
         note='model forward over all scales and flips; file writing not included', **ctx)
    emit('cam_export.compile_time', timing['compile_s'], 's', **ctx)
    self.flops_figures('cam_export', timing['flops'], timing['step_s'], config.model.dtype, ctx)

  def train_seg(self):
    from gwsss_jax.seg import common  # pylint: disable=g-import-not-at-top
    from gwsss_jax.stages import train_seg  # pylint: disable=g-import-not-at-top
    from gwsss_jax.train import parallel  # pylint: disable=g-import-not-at-top
    from gwsss_jax.train import trainer  # pylint: disable=g-import-not-at-top
    config = self.config.copy_and_resolve_references()
    if self.quick:
      config.seg.width = 0.0625
      config.seg.crop_size = 33
      config.seg.batch_size = 2
    module = common.build_model(config, caffe_layout=False)
    variables = common.init_variables(module, config, jax.random.key(config.seed))
    tx, _ = common.optimizer(config, variables['params'])
    state = trainer.init_state(variables['params'], variables['batch_stats'], tx, config.seed)
    batch_size = self.global_batch(config.seg.batch_size)
    dp = parallel.DataParallel('shard_map', self.mesh, batch_size, 'seg.batch_size')
    step = dp.compile(trainer.make_train_step(train_seg.make_loss_fn(module, config.seg.msc), tx))
    size = config.seg.crop_size
    rng = np.random.default_rng(0)
    batch = dp.shard_batch({
        'images': rng.standard_normal((batch_size, size, size, 3), np.float32),
        'labels': rng.integers(0, config.seg.num_classes, (batch_size, size, size), np.int32)})
    timing = compile_and_time(step, (dp.replicate(state), batch), steps=self.steps,
                              warmup=self.warmup, carry=carry_state)
    ctx = dict(self.context, model=config.seg.model, crop_size=size, width=config.seg.width,
               batch=batch_size, msc=bool(config.seg.msc), dtype=config.seg.dtype)
    emit('train_seg.images_per_s', batch_size / timing['step_s'], 'images/s', **ctx)
    emit('train_seg.step_time', timing['step_s'], 's',
         all_steps_s=[round(t, 4) for t in timing['step_all']], **ctx)
    emit('train_seg.compile_time', timing['compile_s'], 's', **ctx)
    self.flops_figures('train_seg', timing['flops'], timing['step_s'], config.seg.dtype, ctx)


def run(config, groups, *, quick: bool = False, num_devices: int = 1, steps: int = 5,
        warmup: int = 1) -> None:
  """Runs the benchmark `groups` (names from GROUPS) for `config`, printing JSON lines."""
  unknown = [g for g in groups if g not in GROUPS]
  if unknown:
    raise UserError(f'--only={",".join(groups)}: unknown group(s) {unknown}; choose from '
                    f'{", ".join(GROUPS)}')
  bench = Bench(config, quick, num_devices, steps, warmup)
  bench.matmul_ceiling()
  for group in groups:
    getattr(bench, group)()
    memory_figures(group, bench.context)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _YNN_CONV.value:
    xla_flags.configure_cpu()
  if _QUICK.value and not flags.FLAGS['graph_ks'].present:
    _GRAPH_KS.value = ['2', '3']
  try:
    run(_CONFIG.value, [g.strip() for g in _ONLY.value if g.strip()], quick=_QUICK.value,
        num_devices=_NUM_DEVICES.value, steps=max(_STEPS.value, 1),
        warmup=max(_WARMUP.value, 0))
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
