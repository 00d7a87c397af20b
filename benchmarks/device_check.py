"""The accelerator check: the project's training steps on one device, side by side with PyTorch.

  bash benchmarks/device_check.sh [--quick] [--budget_s=450] [--parts=...]   (from the repo root)
  python -m benchmarks.device_check [same flags]        # where ml-collections is installed

Prints one JSON line per figure and writes them, with a Markdown table of the same figures, to
`--out` (`device_check.jsonl`, `device_check.md`). Parts, each in its own process with its own
time limit, in this order (the figures the goals of docs/accelerators.md name come first):

- `paper_bf16`, `paper_fp32`: the paper-variant classifier step (VGG16, K=4, T=3, 224x224,
  `configs/voc.py`) in bf16 activations (fp32 parameters, optimizer state and loss) and in fp32,
  at 1 group per device and at the largest per-device batch of groups that fits (estimated from
  XLA's memory analysis of the 1-group step and the device's memory limit, then halved on
  out-of-memory).
- `release`: the release-variant step (VGG16, K=3, 224x224, 1 group, fp32) in JAX and the same
  network in PyTorch eager and `torch.compile` (`benchmarks/torch_vgg_step.py --serve`
  subprocesses), timed in rotating order round after round as `benchmarks/versus_torch.py` does.
- `deeplab`: the DeepLab-v2 ResNet-101 training step, 321x321, batch 10, bf16 then fp32.
- `cam_export`: group-inference CAM export (K=4, 4 scales + flips), images/s of the forward.
- `crf`: the JAX dense CRF (`gwsss_jax.bench`'s `crf` group: 240x320 images, 21 labels,
  `seg.crf_params`, 10 iterations), images/s on the device; the C++ reference beside it where
  pydensecrf2 is installed (the GPU machine has none: docs/crf.md has its CPU figures).

Every line carries the step time, MFU (XLA's FLOP count of the JAX step over the step time, as a
fraction of the device's dense peak for the dtype; TF32 for fp32 on GPUs) and the device's peak
memory in the part's process so far (null where `memory_stats()` reports none). A figure that
fails (out of memory, an error, its part's time limit) is a JSON line with `"value": null` and
an `"error"`, and the check goes on. `--quick` shrinks widths and images so that the whole check
runs on a CPU in well under a minute (the smoke test in tests/test_device_check.py); its figures
say nothing about speed.

Nothing here imports TensorFlow, tfds or clu: the GPU machine has none of them.
"""

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_SCRIPT = os.path.join(ROOT, 'benchmarks', 'torch_vgg_step.py')

# (part, time limit in seconds on a device, process start-up included). Sum 450 s, the default
# `--budget_s`: the whole check stays inside 8 minutes, and a part never gets more than what is
# left of the budget. `release` has the most: torch.compile's first call compiles. `crf` has
# room for a fresh process's CUDA start-up and its first compile next to its 3 rounds.
PARTS = (('paper_bf16', 110), ('release', 140), ('deeplab', 80), ('paper_fp32', 45),
         ('cam_export', 35), ('crf', 40))
# --quick's parts take seconds of CPU time each; the limit is loose so that a busy machine does
# not fail the smoke test.
QUICK_LIMIT_S = 150


# --- the driver -------------------------------------------------------------------------------

def record(name: str, value, unit: str, **fields) -> dict:
  return {'name': name, 'value': value, 'unit': unit, **fields}


def run_part(part: str, limit_s: float, quick: bool, extra_env: dict) -> list:
  """Runs one part in a subprocess for at most `limit_s`; echoes and returns its records.

  A part that exits non-zero or runs out of time adds a record saying so (its figures printed
  until then are kept).
  """
  cmd = [sys.executable, '-m', 'benchmarks.device_check', f'--part={part}',
         f'--part_limit_s={limit_s:.0f}'] + (['--quick'] if quick else [])
  env = dict(os.environ, PYTHONUNBUFFERED='1', **extra_env)
  t0 = time.monotonic()
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
  records, timed_out = [], False
  while True:
    left = limit_s - (time.monotonic() - t0)
    if left <= 0:
      timed_out = True
      proc.kill()
      break
    ready, _, _ = select.select([proc.stdout], [], [], min(left, 1.0))
    if not ready:
      continue
    line = proc.stdout.readline()
    if not line:
      break
    line = line.strip()
    if line.startswith('{'):
      try:
        rec = json.loads(line)
      except json.JSONDecodeError:
        continue
      records.append(rec)
      print(json.dumps(rec), flush=True)
  proc.wait()
  elapsed = time.monotonic() - t0
  if timed_out or proc.returncode != 0:
    why = (f'time limit of {limit_s:.0f} s reached' if timed_out
           else f'exit code {proc.returncode} (see stderr above)')
    rec = record(f'{part}.incomplete', None, '', part=part, error=why,
                 elapsed_s=round(elapsed, 1))
    records.append(rec)
    print(json.dumps(rec), flush=True)
  return records


def _fmt(x, unit: str = '') -> str:
  if x is None:
    return 'n/a'
  if isinstance(x, float):
    if unit == '%':
      return f'{100 * x:.1f}%'
    return f'{x:.3g}'
  return str(x)


def markdown_table(records: list) -> str:
  """The figures as a Markdown table (one row per record), with the run's context above it."""
  first = next((r for r in records if r.get('device')), {})
  head = (f"Device: {first.get('device', 'unknown')}; jax {first.get('jax', '?')}; "
          f"date {first.get('date', time.strftime('%Y-%m-%d'))}; command "
          f"`bash benchmarks/device_check.sh{' --quick' if first.get('quick') else ''}`.\n\n")
  rows = ['| figure | configuration | value | step | MFU | peak device memory | note |',
          '|---|---|---|---|---|---|---|']
  for r in records:
    value = 'failed' if r.get('value') is None else f"{_fmt(r['value'])} {r.get('unit', '')}"
    step = '' if r.get('step_s') is None else f"{r['step_s'] * 1000:.1f} ms"
    mem = '' if r.get('device_memory_peak_gib') is None else (
        f"{r['device_memory_peak_gib']:.1f} GiB")
    note = r.get('error') or r.get('note') or ''
    rows.append(f"| {r['name']} | {r.get('config', '')} | {value} | {step} | "
                f"{_fmt(r.get('mfu'), '%') if 'mfu' in r else ''} | {mem} | "
                f"{str(note).replace('|', '/')[:160]} |")
  return head + '\n'.join(rows) + '\n'


def drive(args) -> int:
  out = args.out or os.environ.get('OUT') or os.path.join(ROOT, 'runs', 'device_check')
  os.makedirs(out, exist_ok=True)
  wanted = [p.strip() for p in args.parts.split(',') if p.strip()] if args.parts else None
  parts = [(p, s) for p, s in PARTS if wanted is None or p in wanted]
  unknown = sorted(set(wanted or ()) - {p for p, _ in PARTS})
  if unknown:
    print(f'error: --parts: unknown part(s) {unknown}; choose from '
          f'{", ".join(p for p, _ in PARTS)}', file=sys.stderr)
    return 2
  extra_env = {}
  if args.quick:  # a smoke test of the code paths, on the CPU unless JAX_PLATFORMS says else
    from gwsss_jax.common import xla_flags  # pylint: disable=g-import-not-at-top
    extra_env = {'JAX_PLATFORMS': os.environ.get('JAX_PLATFORMS', 'cpu'),
                 'XLA_FLAGS': os.environ.get('XLA_FLAGS', '')}
    xla_flags.configure_quick_cpu(extra_env)
  if args.budget_s is None:
    args.budget_s = 900 if args.quick else sum(limit for _, limit in PARTS)
  t0 = time.monotonic()
  records = []
  for part, limit in parts:
    left = args.budget_s - (time.monotonic() - t0)
    limit = min(QUICK_LIMIT_S if args.quick else limit, left)
    if limit < 5:
      rec = record(f'{part}.skipped', None, '', part=part,
                   error=f'--budget_s={args.budget_s} spent before this part')
      print(json.dumps(rec), flush=True)
      records.append(rec)
      continue
    env = dict(extra_env)
    if part == 'release':  # JAX and the torch processes share the GPU: no preallocated pool
      env['XLA_PYTHON_CLIENT_PREALLOCATE'] = 'false'
    records += run_part(part, limit, args.quick, env)
  _atomic_write(os.path.join(out, 'device_check.jsonl'),
                ''.join(json.dumps(r) + '\n' for r in records))
  _atomic_write(os.path.join(out, 'device_check.md'), markdown_table(records))
  print(f'# wrote {out}/device_check.jsonl and device_check.md in '
        f'{time.monotonic() - t0:.0f} s', file=sys.stderr, flush=True)
  return 0


def _atomic_write(path: str, text: str) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


# --- the parts (each runs in its own process) -----------------------------------------------

class Part:
  """What every part shares: the bench harness, the context and failure-tolerant emitting."""

  def __init__(self, quick: bool):
    import jax  # pylint: disable=g-import-not-at-top
    from gwsss_jax import bench  # pylint: disable=g-import-not-at-top
    from configs import voc  # pylint: disable=g-import-not-at-top
    self.jax, self.bench, self.quick = jax, bench, quick
    self.config = voc.get_config()
    self.steps, self.warmup = (1, 0) if quick else (5, 2)
    self.harness = bench.Bench(self.config, quick, num_devices=1, steps=self.steps,
                               warmup=self.warmup)
    self.device = self.harness.devices[0]
    self.context = {k: self.harness.context[k] for k in ('device', 'jax', 'date', 'quick')}

  def emit(self, name: str, value, unit: str, **fields) -> dict:
    return self.bench.emit(name, value, unit, **fields, **self.context)

  def memory_gib(self):
    return self.bench.device_memory_peak_gib(self.device)

  def step_figure(self, name: str, config_text: str, timing: dict, images: int, dtype: str,
                  **fields) -> dict:
    """One JSON line for a timed step: images/s, step time, MFU, memory, compile time."""
    peak, source = self.bench.device_peak_flops(self.device, dtype)
    flops = timing.get('flops')
    mfu = (flops / timing['step_s'] / peak) if (flops and peak) else None
    return self.emit(name, images / timing['step_s'], 'images/s', config=config_text,
                     step_s=timing['step_s'], mfu=mfu, flops_per_step=flops,
                     peak_flops_per_s=peak, peak_source=source,
                     compile_s=round(timing['compile_s'], 2),
                     device_memory_peak_gib=self.memory_gib(), dtype=dtype,
                     all_steps_s=[round(t, 5) for t in timing['step_all']], **fields)

  def failed(self, name: str, config_text: str, error: BaseException, unit='images/s') -> dict:
    return self.emit(name, None, unit, config=config_text,
                     error=f'{type(error).__name__}: {str(error)[:300]}',
                     device_memory_peak_gib=self.memory_gib())


def is_oom(error: BaseException) -> bool:
  text = str(error)
  return 'RESOURCE_EXHAUSTED' in text or 'out of memory' in text.lower()


def paper_part(quick: bool, dtype: str) -> None:
  """The paper-variant step at 1 group per device, then at the largest batch that fits."""
  from gwsss_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  p = Part(quick)
  short = 'bf16' if dtype == 'bfloat16' else 'fp32'
  config = p.harness.model_config('vgg16', 4)
  config.model.dtype = dtype
  size = config_lib.input_size(config)
  describe = lambda b: (f'VGG16 paper variant, K={config.model.num_nodes}, '
                        f'T={config.model.graph_steps}, {size}x{size}, {short}, '
                        f'{b} group(s)/device')

  def measure(batch: int) -> dict:
    p.harness.per_device_batch = batch
    return p.harness.classifier_step(config)

  try:
    one = measure(1)
    p.step_figure(f'paper_step_{short}', describe(1), one, 4, dtype, per_device_batch=1)
  except Exception as e:  # pylint: disable=broad-except
    p.failed(f'paper_step_{short}', describe(1), e)
    return
  if quick and dtype == 'float32':
    return  # the bf16 part runs the search; the smoke test keeps to one per process
  batch = largest_batch(one.get('memory'), p.device, quick)
  tries = 0
  while batch > 1 and tries < 3:
    tries += 1
    try:
      timing = measure(batch)
      p.step_figure(f'paper_step_{short}_max_batch', describe(batch), timing, 4 * batch, dtype,
                    per_device_batch=batch,
                    note='largest per-device batch tried that fit (estimate from XLA memory '
                         'analysis, halved on out-of-memory)')
      return
    except Exception as e:  # pylint: disable=broad-except
      if not is_oom(e):
        p.failed(f'paper_step_{short}_max_batch', describe(batch), e)
        return
      batch //= 2
  p.emit(f'paper_step_{short}_max_batch', None, 'images/s', config=describe(batch),
         error='no per-device batch above 1 fits' if tries else
         'no estimate of the largest batch (no memory analysis or memory limit)')


def largest_batch(memory, device, quick: bool, cap: int = 64) -> int:
  """Groups per device that should fit, from the 1-group step's XLA memory analysis.

  The state (arguments, aliased by the donated outputs) is paid once; temporaries and the
  batch grow with the groups. 85% of the device's limit leaves room for fragmentation.
  """
  if quick:
    return 2  # exercises several groups per device; memory is not the question on a CPU
  try:
    limit = (device.memory_stats() or {}).get('bytes_limit')
  except Exception:  # pylint: disable=broad-except
    limit = None
  if not memory or not limit:
    return 1
  fixed = memory['arguments'] + memory['outputs'] - memory['aliased']
  per_group = max(memory['temp'], 1)
  return int(max(1, min(cap, (0.85 * limit - fixed) // per_group)))


class TorchServer:
  """`torch_vgg_step.py --serve` on the device; `time(op)` waits at most `timeout` seconds."""

  def __init__(self, quick: bool, device: str, compiled: bool):
    args = [sys.executable, TORCH_SCRIPT, '--serve', f'--device={device}']
    if quick:  # one thread: idle OpenMP threads spin against JAX's on a small CPU
      args += ['--width=0.0625', '--size=32', '--threads=1']
    else:
      args.append(f'--threads={min(os.cpu_count() or 1, 16)}')
    if compiled:
      args.append('--compile')
    self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True, cwd=ROOT)

  def time(self, op: str, timeout: float) -> float:
    self.proc.stdin.write(op + '\n')
    self.proc.stdin.flush()
    ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
    if not ready:
      self.close()
      raise TimeoutError(f'torch {op} took over {timeout:.0f} s')
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f'{TORCH_SCRIPT} --serve exited (code {self.proc.poll()})')
    return json.loads(line)['s']

  def close(self):
    if self.proc.poll() is None:
      self.proc.kill()
    self.proc.wait()


def release_part(quick: bool, deadline: float) -> None:
  """The release step in JAX against PyTorch eager, then against torch.compile, each pair
  timed in alternating order round after round; nothing waits past `deadline` (monotonic)."""
  from gwsss_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  p = Part(quick)
  p.config.model.variant = 'release'
  p.config.model.importance_prob = 0.2  # the release's --drop_rate 0.8, as torch_vgg_step's
  config = p.harness.model_config('vgg16', 3)
  size = config_lib.input_size(config)
  text = f'VGG16 release variant, K=3, T={config.model.graph_steps}, {size}x{size}, fp32, 1 group'
  try:
    step, step_args, _ = p.harness.build_classifier_step(config)
    t0 = time.perf_counter()
    lowered = step.lower(*step_args)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    flops = p.bench.cost_flops(lowered)
  except Exception as e:  # pylint: disable=broad-except
    p.failed('release_step_jax', text, e)
    return
  state = {'args': step_args}

  def jax_step() -> float:
    t0 = time.perf_counter()
    out = p.bench._block(compiled(*state['args']))  # pylint: disable=protected-access
    elapsed = time.perf_counter() - t0
    state['args'] = p.bench.carry_state(state['args'], out)
    return elapsed

  device = 'cuda' if p.device.platform == 'gpu' else 'cpu'
  rounds = 2 if quick else 10
  for _ in range(2):
    jax_step()  # warm-up

  def rotate(server) -> tuple[list, list]:
    """`rounds` rounds of one JAX step and one torch step, the order alternating."""
    jax_times, torch_times = [], []
    for r in range(rounds):
      if time.monotonic() > deadline - 2:
        break
      for side in (('jax', 'torch') if r % 2 == 0 else ('torch', 'jax')):
        time.sleep(0.05)
        if side == 'jax':
          jax_times.append(jax_step())
        else:
          torch_times.append(server.time('step', max(deadline - time.monotonic(), 1)))
    return jax_times, torch_times

  def emit_jax(times: list, **fields) -> None:
    p.step_figure('release_step_jax', text, {'step_s': statistics.median(times),
                                             'compile_s': compile_s, 'flops': flops,
                                             'step_all': times}, 3, 'float32',
                  rounds=len(times), **fields)

  jax_emitted = False
  for name in ('torch_eager', 'torch_compile'):
    label = f'release_step_{name}'
    if name == 'torch_compile' and quick:
      p.emit(label, None, 'images/s', config=text,
             error='skipped with --quick (inductor compiles for minutes on a CPU)')
      continue
    server = None
    try:
      server = TorchServer(quick, device, compiled=name == 'torch_compile')
      t0 = time.perf_counter()
      # The first call builds (torch.compile: compiles); leave time for a few rounds.
      server.time('step', max(deadline - time.monotonic() - 10, 1))
      warm_s = time.perf_counter() - t0
      jax_times, torch_times = rotate(server)
    except Exception as e:  # pylint: disable=broad-except
      p.failed(label, text, e)
      continue
    finally:
      if server is not None:
        server.close()
    if not torch_times or not jax_times:
      p.emit(label, None, 'images/s', config=text, error='no time left for a timed round')
      continue
    jax_s, torch_s = statistics.median(jax_times), statistics.median(torch_times)
    if not jax_emitted:  # the JAX figure of the rounds against eager
      emit_jax(jax_times)
      jax_emitted = True
    p.step_figure(label, f'{text}, PyTorch {name.split("_")[1]}',
                  {'step_s': torch_s, 'compile_s': warm_s, 'flops': flops,
                   'step_all': torch_times}, 3, 'float32', rounds=len(torch_times),
                  jax_speedup=torch_s / jax_s, jax_step_s_these_rounds=jax_s,
                  note=(f'JAX is {torch_s / jax_s:.2f}x the images/s of this, in alternating '
                        "rounds; MFU uses the JAX step's FLOP count; compile = first call"))
  if not jax_emitted:  # PyTorch gave no figure (missing, failed): the JAX step still has one
    jax_times = []
    for _ in range(rounds):
      if time.monotonic() > deadline - 2:
        break
      jax_times.append(jax_step())
    if not jax_times:
      p.emit('release_step_jax', None, 'images/s', config=text,
             error='no time left for a timed round')
      return
    emit_jax(jax_times, note='timed alone: PyTorch gave no figure')


def deeplab_part(quick: bool) -> None:
  p = Part(quick)
  for dtype in ('bfloat16',) if quick else ('bfloat16', 'float32'):
    p.harness.config = p.config.copy_and_resolve_references()
    p.harness.config.seg.dtype = dtype
    if quick:  # ResNet-101's step compiles for tens of seconds on a CPU, even tiny
      p.harness.config.seg.model = 'deeplab_largefov_vgg16'
    short = 'bf16' if dtype == 'bfloat16' else 'fp32'
    text = None
    try:
      timing, ctx = p.harness.train_seg_timing()
      name = {'deeplab_v2_resnet101': 'DeepLab-v2 ResNet-101 (OS '
              f'{p.harness.config.seg.output_stride})'}.get(ctx['model'], ctx['model'])
      text = f"{name}, {ctx['crop_size']}x{ctx['crop_size']}, batch {ctx['batch']}, {short}"
      p.step_figure(f'deeplab_step_{short}', text, timing, ctx['batch'], dtype)
    except Exception as e:  # pylint: disable=broad-except
      p.failed(f'deeplab_step_{short}', text or f'DeepLab-v2 ResNet-101, {short}', e)


def cam_export_part(quick: bool) -> None:
  p = Part(quick)
  p.harness.config.cams.batch_size = 1 if quick else 8
  if quick:
    p.harness.config.cams.scales = (1.0, 0.5)
  text = 'group inference'
  try:
    timing, ctx = p.harness.cam_export_timing()
    passes = len(ctx['scales']) * (2 if ctx['flip'] else 1)
    text = (f"VGG16 paper variant, K={ctx['K']}, {ctx['image_size']} px, scales "
            f"{'/'.join(str(s) for s in ctx['scales'])}{' + flips' if ctx['flip'] else ''} "
            f"({passes} forward passes), {ctx['batch_groups']} groups per call, fp32")
    p.step_figure('cam_export', text, timing, ctx['images'], ctx['dtype'],
                  note='model forward of export_cams; file writing not included')
  except Exception as e:  # pylint: disable=broad-except
    p.failed('cam_export', text, e)


def crf_part(quick: bool) -> None:
  from gwsss_jax import crf as crf_lib  # pylint: disable=g-import-not-at-top
  from gwsss_jax.crf import bench as crf_bench  # pylint: disable=g-import-not-at-top
  p = Part(quick)
  try:
    crf_bench.run(p.emit, crf_lib.params_from_config(p.config.seg.crf_params), [p.device],
                  quick=quick, rounds=1 if quick else 3, context={})
  except Exception as e:  # pylint: disable=broad-except
    p.failed('crf.jax.images_per_s', 'dense CRF', e)


def run_one(part: str, quick: bool, limit_s: float) -> None:
  if part == 'paper_bf16':
    paper_part(quick, 'bfloat16')
  elif part == 'paper_fp32':
    paper_part(quick, 'float32')
  elif part == 'release':
    release_part(quick, time.monotonic() + limit_s - 5)
  elif part == 'deeplab':
    deeplab_part(quick)
  elif part == 'cam_export':
    cam_export_part(quick)
  elif part == 'crf':
    crf_part(quick)
  else:
    raise SystemExit(f'unknown part {part!r}')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true', help='tiny sizes on any device (smoke test)')
  parser.add_argument('--budget_s', type=float, default=None,
                      help='wall-clock budget of all parts together, seconds (default 450; '
                      'with --quick, 900, for a busy CPU)')
  parser.add_argument('--parts', default='', help='comma-separated subset of the parts')
  parser.add_argument('--out', default='', help="output folder ('' = $OUT, else "
                      'runs/device_check)')
  # Internal: one part in this process, within --part_limit_s (the driver's limit for it).
  parser.add_argument('--part', default='', help=argparse.SUPPRESS)
  parser.add_argument('--part_limit_s', type=float, default=600, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.part:
    run_one(args.part, args.quick, args.part_limit_s)
    return 0
  return drive(args)


if __name__ == '__main__':
  sys.exit(main())
