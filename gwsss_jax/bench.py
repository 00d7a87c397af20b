"""Benchmarks of the pipeline's compute, one JSON line per figure.

  python -m gwsss_jax.bench --config=configs/voc.py [--only=train_cls,graph_share,...] [--quick]

Groups (`--only`, default all): `train_cls` (classifier training step: images/s, step time,
compile time, FLOPs and achieved FLOP/s against the device's peak, for each backbone of
`--backbones` and K of `--ks` at the classifier's input size), `graph_share` (the graph's share of the
step for K in `--graph_ks`: the step with `model.graph_steps` message-passing rounds against the
same step with none), `input_pipeline` (groups/s of `input_pipeline.train_iterator`),
`cam_export` (the group-inference forward of `export_cams` over `cams.scales` and flips),
`train_seg` (DeepLab training step), `crf` (dense CRF images/s, reference and JAX:
`gwsss_jax/crf/bench.py`). After each group, the process's peak host memory
(`getrusage` maxrss: a running maximum over the whole process, so run one group per process for
a per-group figure) and, where the runtime reports it, the device's peak memory.

Each compiled step also gives `<group>.mfu`: XLA's FLOP count of the step over its time, as a
fraction of the device's peak for `model.dtype` (`--config.model.dtype=bfloat16` for bf16
activations; parameters, optimizer state and loss stay float32). `--per_device_batch=N` runs N
groups on each device (the global batch is N x devices).

Each line is `{"name", "value", "unit", ...context}`; a figure that cannot be measured (no data
for the input pipeline, an unknown peak, no device memory statistics) gets `"value": null` and
a `"note"`. Only the `input_pipeline` group imports TensorFlow: the step groups run without it.
`--quick` shrinks widths and sizes so that every group runs in seconds (the smoke test); its
figures say nothing about speed. Timings are the median of `--steps` steps after `--warmup`
steps, on `--num_devices` devices (the global batch is the configured one rounded up to a
multiple).
`--quick` defaults to one step without warm-up and, on a CPU, compiles without XLA's backend
optimisations (`xla_flags.configure_quick_cpu`).

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

from gwsss_jax.common import blas

blas.limit_threads()  # as gwsss_jax.main does: input_pipeline times the loader as training runs it

# pylint: disable=g-import-not-at-top,wrong-import-position,g-bad-import-order
from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from gwsss_jax import config as config_lib
from gwsss_jax.common import cli
from gwsss_jax.common import xla_flags
from gwsss_jax.common.errors import UserError
# pylint: enable=g-import-not-at-top,wrong-import-position,g-bad-import-order

GROUPS = ('train_cls', 'graph_share', 'input_pipeline', 'cam_export', 'train_seg', 'crf')

# Per-device dense peaks in FLOP/s, (float32, TF32 tensor cores, bfloat16), keyed by a substring
# of `device.device_kind` (first match wins). TPU v2/v3 devices are single cores, v4+ chips.
# V100 and T4 have no bf16 units: their third figure is FP16, their TF32 None.
ACCELERATOR_PEAKS = (
    ('H200', (67e12, 494.7e12, 989.4e12)),
    ('H100 PCIe', (51e12, 378e12, 756e12)),
    ('H100', (67e12, 494.7e12, 989.4e12)),
    ('A100', (19.5e12, 156e12, 312e12)),
    ('A10G', (31.2e12, 62.5e12, 125e12)),
    ('L4', (30.3e12, 60e12, 121e12)),
    ('V100', (15.7e12, None, 125e12)),
    ('T4', (8.1e12, None, 65e12)),
    ('TPU v2', (None, None, 22.5e12)),
    ('TPU v3', (None, None, 61.5e12)),
    ('TPU v4', (None, None, 275e12)),
    ('TPU v5 lite', (None, None, 197e12)),
    ('TPU v5e', (None, None, 197e12)),
    ('TPU v5p', (None, None, 459e12)),
    ('TPU v5', (None, None, 459e12)),
    ('TPU v6 lite', (None, None, 918e12)),
    ('TPU v6e', (None, None, 918e12)),
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
  """(peak FLOP/s of one device for `dtype`, source) or (None, why).

  float32 on a GPU with TF32 units counts against the TF32 peak unless
  `jax_default_matmul_precision` asks for full float32: at JAX's default precision XLA runs
  float32 convolutions and matmuls on the TF32 tensor cores there, as PyTorch does its
  convolutions.
  """
  if device.platform == 'cpu':
    return cpu_peak_flops()
  kind = getattr(device, 'device_kind', '')
  for key, (fp32, tf32, bf16) in ACCELERATOR_PEAKS:
    if key.lower() in kind.lower():
      if dtype == 'bfloat16':
        return bf16, f'data sheet ({key}, dense bfloat16)'
      precision = str(jax.config.jax_default_matmul_precision or '').lower()
      if device.platform == 'gpu' and tf32 and precision not in ('highest', 'float32'):
        return tf32, f'data sheet ({key}, dense TF32: float32 at JAX\'s default precision)'
      if fp32 is None:
        return None, f'{kind}: no FP32 peak listed (matmuls run in bf16 passes)'
      return fp32, f'data sheet ({key}, dense float32)'
  return None, f'unknown device kind {kind!r}'


def cost_flops(lowered) -> Optional[float]:
  """FLOPs of one call of a function, from XLA's cost analysis of its lowered (not compiled)
  form (None if absent).

  The compiled module would do on a CPU, but on GPUs XLA turns convolutions into cuDNN custom
  calls, which the compiled module's analysis counts as no FLOPs at all: the paper variant's
  step then shows a few percent of its work. The lowered module still holds the convolutions
  (for a `shard_map`ped step, each device's part), and on a CPU both give the same count.
  """
  try:
    analysis = lowered.cost_analysis()
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
  lowered = fn.lower(*args)
  compiled = lowered.compile()
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
          'flops': cost_flops(lowered), 'memory': compiled_memory(compiled)}


def compiled_memory(compiled) -> Optional[dict]:
  """XLA's memory analysis of a compiled function in bytes ({'arguments', 'outputs',
  'aliased', 'temp'}), or None where the backend gives none."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if m is None:
    return None
  try:
    return {'arguments': int(m.argument_size_in_bytes), 'outputs': int(m.output_size_in_bytes),
            'aliased': int(m.alias_size_in_bytes), 'temp': int(m.temp_size_in_bytes)}
  except AttributeError:
    return None


def carry_state(args: tuple, result) -> tuple:
  """`compile_and_time`'s carry for a train step `(state, batch) -> (state, ...)`."""
  return (result[0],) + tuple(args[1:])


def device_memory_peak_gib(device=None) -> Optional[float]:
  """The device's peak bytes in use so far (GiB), or None where `memory_stats()` has none."""
  try:
    stats = (device or jax.devices()[0]).memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  if stats and 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 1024**3
  return None


def memory_figures(group: str, context: dict) -> None:
  """Peak host memory of the process so far and, where reported, of the first device."""
  maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  emit('host_memory_peak', maxrss_kib / 1024**2, 'GiB', after=group,
       scope='process maximum so far (getrusage maxrss)', **context)
  peak = device_memory_peak_gib()
  if peak is not None:
    emit('device_memory_peak', peak, 'GiB', after=group,
         scope='device 0, process maximum so far', **context)
  else:
    emit('device_memory_peak', None, 'GiB', after=group, note='n/a: the runtime reports no '
         'memory_stats() for this device', **context)


def flops_figures(device, prefix: str, flops, step_s: float, dtype: str,
                  context: dict) -> Optional[float]:
  """Emits `<prefix>.flops_per_step`, `.achieved_flops_per_s` and `.mfu`; returns the MFU.

  MFU here is XLA's FLOP count of the lowered step (per device; `cost_flops`) over the step
  time, as a fraction of the device's dense peak for `dtype` (`device_peak_flops`). XLA counts the
  convolutions and matmuls the step really runs, so the figure is comparable across
  frameworks only for the same network and batch.
  """
  if flops is None:
    emit(f'{prefix}.achieved_flops_per_s', None, 'FLOP/s', note='no XLA cost analysis',
         **context)
    emit(f'{prefix}.mfu', None, 'fraction of peak', note='no XLA cost analysis', **context)
    return None
  emit(f'{prefix}.flops_per_step', flops, 'FLOP', source='XLA cost_analysis (per device)',
       **context)
  peak, source = device_peak_flops(device, dtype)
  achieved = flops / step_s
  mfu = (achieved / peak) if peak else None
  emit(f'{prefix}.achieved_flops_per_s', achieved, 'FLOP/s', peak_flops_per_s=peak,
       fraction_of_peak=mfu, peak_source=source, **context)
  emit(f'{prefix}.mfu', mfu, 'fraction of peak', peak_flops_per_s=peak, peak_source=source,
       **({} if peak else {'note': source}), **context)
  return mfu


class Bench:
  """Holds the configuration, devices and shared context of one benchmark run."""

  def __init__(self, config, quick: bool, num_devices: int, steps: int, warmup: int, *,
               backbones=('vgg16', 'resnet101'), ks=(3, 4), graph_ks=None,
               per_device_batch: int = 0, workdir: str = '', pipeline_batches: int = 20):
    from gwsss_jax.train import parallel  # pylint: disable=g-import-not-at-top
    self.config = config
    self.quick = quick
    self.workdir = workdir
    self.pipeline_batches = pipeline_batches
    self.backbones = tuple(backbones)
    self.ks = tuple(int(k) for k in ks)
    self.graph_ks = tuple(int(k) for k in (
        graph_ks if graph_ks is not None else ((2, 3) if quick else range(2, 9))))
    self.per_device_batch = per_device_batch
    self._init_cache = {}
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

  def global_batch(self, configured: int, per_device: int = 0) -> int:
    """`per_device` x devices when given, else `configured` rounded up to a multiple."""
    n = len(self.devices)
    if per_device > 0:
      return per_device * n
    return -(-configured // n) * n

  def model_config(self, backbone: str, num_nodes: int, graph_steps: Optional[int] = None):
    """A copy of the config for one classifier variant (shrunk when quick)."""
    c = self.config.copy_and_resolve_references()
    c.model.backbone = backbone
    c.model.num_nodes = num_nodes
    if graph_steps is not None:
      c.model.graph_steps = graph_steps
    if self.quick:
      c.model.width = 0.0625
      c.model.node_dim = 16
      c.data.crop_size = 32
      c.model.graph_steps = min(c.model.graph_steps, 1)
    return c

  def flops_figures(self, prefix: str, flops, step_s: float, dtype: str, context: dict):
    """FLOPs per step, achieved FLOP/s and MFU (achieved / the device's peak for `dtype`)."""
    return flops_figures(self.devices[0], prefix, flops, step_s, dtype, context)

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
    from gwsss_jax.train import optim  # pylint: disable=g-import-not-at-top
    from gwsss_jax.train import parallel  # pylint: disable=g-import-not-at-top
    from gwsss_jax.train import steps  # pylint: disable=g-import-not-at-top
    from gwsss_jax.train import trainer  # pylint: disable=g-import-not-at-top
    model = classifier.build_classifier(config.model, config.data.num_classes)
    # The same network at another batch reuses its host copy of the initial variables (an
    # init compiles for seconds on a CPU; the step's state is donated, so the copy stays here).
    key = (config.model.to_json(), config_lib.input_size(config), config.data.num_classes,
           config.seed)
    if key not in self._init_cache:
      self._init_cache[key] = jax.device_get(
          steps.init_classifier(model, config, jax.random.key(config.seed)))
    variables = self._init_cache[key]
    params, batch_stats = variables['params'], variables.get('batch_stats', {})
    tx, _ = optim.classifier_optimizer(config.train, params, batch_stats, config.model.freeze_bn,
                                       steps_per_epoch=1000)
    state = trainer.init_state(params, batch_stats, tx, config.seed)
    batch_size = self.global_batch(config.train.batch_size, self.per_device_batch)
    dp = parallel.DataParallel(config.parallel.impl, self.mesh, batch_size)
    step = dp.compile(trainer.make_train_step(
        steps.classifier_loss_fn(model, config, with_cams=False), tx,
        update_batch_stats=bool(not config.model.freeze_bn and jax.tree.leaves(batch_stats))))
    batch = dp.shard_batch(self.classifier_batch(config, batch_size))
    return step, (dp.replicate(state), batch), batch_size

  def classifier_batch(self, config, batch_size: int) -> dict:
    k, num_classes = config.model.num_nodes, config.data.num_classes
    size = config_lib.input_size(config)
    rng = np.random.default_rng(0)
    labels = np.zeros((batch_size, k, num_classes), np.float32)
    labels[:, :, 0] = 1  # the group's common class
    labels[rng.random(labels.shape) < 0.1] = 1
    adjacency = (np.einsum('bkl,bjl->bkj', labels, labels) > 0).astype(np.float32)
    return {'images': rng.standard_normal((batch_size, k, size, size, 3), np.float32),
            'labels': labels, 'adjacency': adjacency}

  def train_cls(self):
    for backbone in self.backbones:
      for k in self.ks:
        config = self.model_config(backbone, k)
        timing = self.classifier_step(config)
        ctx = dict(self.context, backbone=backbone, K=k, T=config.model.graph_steps,
                   image_size=config_lib.input_size(config), width=config.model.width,
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
    for k in self.graph_ks:
      with_graph = self.model_config(backbone, k)
      without = self.model_config(backbone, k, graph_steps=0)
      full = self.classifier_step(with_graph)
      base = self.classifier_step(without)
      share = max(full['step_s'] - base['step_s'], 0.0) / full['step_s']
      flops_share = None
      if full['flops'] and base['flops']:
        flops_share = (full['flops'] - base['flops']) / full['flops']
      emit('graph_share', share, 'fraction of step time', **dict(
          self.context, backbone=backbone, K=k, T=with_graph.model.graph_steps,
          image_size=config_lib.input_size(with_graph), width=with_graph.model.width,
          variant=with_graph.model.variant, step_time_s=full['step_s'],
          step_time_without_graph_s=base['step_s'], flops_share=flops_share))

  # --- input pipeline, CAM export, segmentation --------------------------------------

  def input_pipeline(self):
    import io as pyio  # pylint: disable=g-import-not-at-top
    import contextlib  # pylint: disable=g-import-not-at-top
    from gwsss_jax.data import datasets  # pylint: disable=g-import-not-at-top
    from gwsss_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
    config = self.config.copy_and_resolve_references()
    ctx = dict(self.context, dataset=config.data.name, loader=config.data.loader,
               K=config.model.num_nodes,
               image_size=config.data.crop_size, batch_groups=config.train.batch_size)
    try:
      with tempfile.TemporaryDirectory() as tmp:
        workdir = self.workdir or tmp
        if self.quick and config.data.name == 'synthetic' and not config.data.root:
          config.data.synthetic.num_train = 24
          config.data.synthetic.num_val = 4
          config.data.synthetic.size = 64
          config.data.crop_size = min(config.data.crop_size, 56)
          config.data.resize = min(config.data.resize, 64)
          ctx['image_size'] = config.data.crop_size
        datasets.prepare(config, workdir)
        batches = 3 if self.quick else self.pipeline_batches
        with contextlib.redirect_stdout(pyio.StringIO()):  # keep stdout JSON lines only
          rate = input_pipeline.benchmark(config, batches)
    except (UserError, OSError) as e:
      emit('input_pipeline.groups_per_s', None, 'groups/s', note=str(e), **ctx)
      return
    emit('input_pipeline.groups_per_s', rate, 'groups/s',
         threads=os.cpu_count(), **ctx)

  def cam_export(self):
    timing, ctx = self.cam_export_timing()
    emit('cam_export.images_per_s', ctx['images'] / timing['step_s'], 'images/s',
         note='model forward over all scales and flips; file writing not included', **ctx)
    emit('cam_export.compile_time', timing['compile_s'], 's', **ctx)
    self.flops_figures('cam_export', timing['flops'], timing['step_s'], ctx['dtype'], ctx)

  def cam_export_timing(self) -> tuple[dict, dict]:
    """Times the group-inference forward of `export_cams`: (timing, context with 'images')."""
    from gwsss_jax.cams import export  # pylint: disable=g-import-not-at-top
    from gwsss_jax.models import classifier  # pylint: disable=g-import-not-at-top
    from gwsss_jax.train import steps  # pylint: disable=g-import-not-at-top
    from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
    from gwsss_jax.train import parallel  # pylint: disable=g-import-not-at-top
    config = self.model_config(self.config.model.backbone, self.config.model.num_nodes)
    model = classifier.build_classifier(config.model, config.data.num_classes)
    variables = steps.init_classifier(model, config, jax.random.key(0))
    k, base = config.model.num_nodes, config_lib.input_size(config)
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
               batch_groups=batch, dtype=config.model.dtype, images=batch * k)
    return timing, ctx

  def train_seg(self):
    timing, ctx = self.train_seg_timing()
    emit('train_seg.images_per_s', ctx['batch'] / timing['step_s'], 'images/s', **ctx)
    emit('train_seg.step_time', timing['step_s'], 's',
         all_steps_s=[round(t, 4) for t in timing['step_all']], **ctx)
    emit('train_seg.compile_time', timing['compile_s'], 's', **ctx)
    self.flops_figures('train_seg', timing['flops'], timing['step_s'], ctx['dtype'], ctx)

  def train_seg_timing(self) -> tuple[dict, dict]:
    """Times the DeepLab training step of `train_seg`: (timing, context with 'batch')."""
    from gwsss_jax.seg import common  # pylint: disable=g-import-not-at-top
    from gwsss_jax.train import parallel  # pylint: disable=g-import-not-at-top
    from gwsss_jax.train import steps  # pylint: disable=g-import-not-at-top
    from gwsss_jax.train import trainer  # pylint: disable=g-import-not-at-top
    config = self.config.copy_and_resolve_references()
    if self.quick:
      config.seg.width = 0.0625
      config.seg.crop_size = 33
      config.seg.batch_size = 2
    module = common.build_model(config, caffe_layout=False)
    variables = common.init_variables(module, config, config.seed)  # int: the fast 'rbg' init
    tx, _ = common.optimizer(config, variables['params'])
    state = trainer.init_state(variables['params'], variables['batch_stats'], tx, config.seed)
    batch_size = self.global_batch(config.seg.batch_size)
    dp = parallel.DataParallel('shard_map', self.mesh, batch_size, 'seg.batch_size')
    step = dp.compile(trainer.make_train_step(steps.segmentation_loss_fn(module, config.seg.msc),
                                              tx))
    size = config.seg.crop_size
    rng = np.random.default_rng(0)
    batch = dp.shard_batch({
        'images': rng.standard_normal((batch_size, size, size, 3), np.float32),
        'labels': rng.integers(0, config.seg.num_classes, (batch_size, size, size), np.int32)})
    timing = compile_and_time(step, (dp.replicate(state), batch), steps=self.steps,
                              warmup=self.warmup, carry=carry_state)
    ctx = dict(self.context, model=config.seg.model, crop_size=size, width=config.seg.width,
               batch=batch_size, msc=bool(config.seg.msc), dtype=config.seg.dtype)
    return timing, ctx


def _crf_group(self):
  from gwsss_jax import crf as crf_lib  # pylint: disable=g-import-not-at-top
  from gwsss_jax.crf import bench as crf_bench  # pylint: disable=g-import-not-at-top
  crf_bench.run(emit, crf_lib.params_from_config(self.config.seg.crf_params), self.devices,
                quick=self.quick, rounds=self.steps, context=self.context)


Bench.crf = _crf_group


def run(config, groups, *, quick: bool = False, num_devices: int = 1, steps: int = 5,
        warmup: int = 1, **options) -> None:
  """Runs the benchmark `groups` (names from GROUPS) for `config`, printing JSON lines.

  `options`: `Bench`'s keyword arguments (backbones, ks, graph_ks, per_device_batch, workdir,
  pipeline_batches).
  """
  config_lib.check_renamed_keys(config)
  unknown = [g for g in groups if g not in GROUPS]
  if unknown:
    raise UserError(f'--only={",".join(groups)}: unknown group(s) {unknown}; choose from '
                    f'{", ".join(GROUPS)}')
  bench = Bench(config, quick, num_devices, steps, warmup, **options)
  bench.matmul_ceiling()
  for group in groups:
    getattr(bench, group)()
    memory_figures(group, bench.context)


def _define_flags():
  """The command line's flags, defined only when bench runs as a program: a module that is
  imported as a library (by tests, benchmarks/, the device check) must not claim absl flag
  names such as --config that other programs define."""
  global _CONFIG, _ONLY, _QUICK, _BACKBONES, _KS, _GRAPH_KS, _PER_DEVICE_BATCH, _STEPS, _WARMUP
  global _NUM_DEVICES, _PIPELINE_BATCHES, _YNN_CONV, _WORKDIR
  _CONFIG = config_flags.DEFINE_config_file('config', 'configs/voc.py', 'Configuration file.')
  _ONLY = flags.DEFINE_list('only', list(GROUPS), f'Figure groups to run, from {GROUPS}.')
  _QUICK = flags.DEFINE_bool('quick', False, 'Tiny widths and sizes (smoke test; not a speed '
                             'figure).')
  _BACKBONES = flags.DEFINE_list('backbones', ['vgg16', 'resnet101'], 'train_cls backbones.')
  _KS = flags.DEFINE_list('ks', ['3', '4'], 'train_cls group sizes K.')
  _GRAPH_KS = flags.DEFINE_list('graph_ks', None,
                                'graph_share group sizes K (default 2..8; 2,3 with --quick).')
  _PER_DEVICE_BATCH = flags.DEFINE_integer(
      'per_device_batch', 0, 'Groups per device for train_cls and graph_share (0 = '
      'train.batch_size rounded up to a multiple of the device count).')
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _YNN_CONV.value:
    xla_flags.configure_cpu()
  # GWSSS_BENCH_SMOKE=1 (as benchmarks/smoke.py): a documented full-size command runs at --quick
  # sizes, so that a test can prove it runs without taking the minutes its figures need.
  quick = _QUICK.value or os.environ.get('GWSSS_BENCH_SMOKE') == '1'
  if quick and not _QUICK.value:
    print('# GWSSS_BENCH_SMOKE=1: --quick sizes; the figures say nothing about speed',
          file=sys.stderr, flush=True)
  if quick:
    xla_flags.configure_quick_cpu()
  if _PER_DEVICE_BATCH.value < 0:
    raise app.UsageError(f'--per_device_batch={_PER_DEVICE_BATCH.value}: must be >= 0')
  try:
    steps, warmup = _STEPS.value, _WARMUP.value
    if quick:  # one step without warm-up unless --steps/--warmup say otherwise
      steps = steps if flags.FLAGS['steps'].present else 1
      warmup = warmup if flags.FLAGS['warmup'].present else 0
    run(_CONFIG.value, [g.strip() for g in _ONLY.value if g.strip()], quick=quick,
        num_devices=_NUM_DEVICES.value, steps=max(steps, 1), warmup=max(warmup, 0),
        backbones=_BACKBONES.value, ks=_KS.value, graph_ks=_GRAPH_KS.value,
        per_device_batch=_PER_DEVICE_BATCH.value, workdir=_WORKDIR.value,
        pipeline_batches=_PIPELINE_BATCHES.value)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  _define_flags()
  cli.run(main, flags_parser=cli.parse_config_flags)
