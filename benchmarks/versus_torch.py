"""The release-sized training step in JAX and in PyTorch, timed in alternation.

  .venv/bin/python -m benchmarks.versus_torch [--rounds=8] [--pause=1.0] [--torch_no_graph]
  (from the repository root)

On a shared machine the speed of both frameworks drifts by tens of percent within minutes, so
figures taken one after the other compare badly. Here one process holds the compiled JAX step
(`gwsss_jax.bench`'s `train_cls` step: `configs/voc.py` with `model.variant=release`, VGG16,
K=3, 224x224, T=3) and a `benchmarks/torch_vgg_step.py --serve` subprocess holds the same
network in PyTorch (2 threads; the release's graph included unless `--torch_no_graph`); each round
times one JAX step and one torch step, in alternating order, with a pause between them so
neither framework's idle threads spin during the other's step. Same for the forward pass
(the JAX forward includes the graph). Prints one JSON line per round and the medians with the
JAX/torch ratio. With GWSSS_BENCH_SMOKE=1 (benchmarks/smoke.py) both networks shrink to
`bench --quick`'s width and image size, torch runs one thread, and one round runs without
warm-up or pauses.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from gwsss_jax.common import xla_flags

from benchmarks import smoke

xla_flags.configure_cpu()
SMOKE = smoke.enabled()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

from gwsss_jax import bench  # pylint: disable=g-import-not-at-top,wrong-import-position
from gwsss_jax.models import classifier  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import voc  # pylint: disable=g-import-not-at-top,wrong-import-position

TORCH_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'torch_vgg_step.py')


class TorchServer:
  """`torch_vgg_step.py --serve` in a subprocess: one timed op per request."""

  def __init__(self, threads: int, no_graph: bool):
    # Smoke: `bench --quick`'s width and image size (Bench.model_config), as the JAX side.
    self.proc = subprocess.Popen(
        [sys.executable, TORCH_SCRIPT, '--serve', f'--threads={threads}']
        + (['--no_graph'] if no_graph else [])
        + (['--width=0.0625', '--size=32'] if SMOKE else []),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

  def time(self, op: str) -> float:
    self.proc.stdin.write(op + '\n')
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f'{TORCH_SCRIPT} --serve exited (code {self.proc.poll()})')
    return json.loads(line)['s']

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--rounds', type=int, default=8)
  parser.add_argument('--pause', type=float, default=1.0, help='seconds between the timings')
  parser.add_argument('--threads', type=int, default=2, help='torch threads')
  parser.add_argument('--torch_no_graph', action='store_true',
                      help="torch without the release's graph (the JAX step keeps it)")
  args = parser.parse_args()
  if SMOKE:  # one thread: idle OpenMP threads would spin against JAX's without the pauses
    args.rounds, args.pause, args.threads = 1, 0.0, 1
  config = voc.get_config()
  config.model.variant = 'release'
  config.model.importance_prob = 0.2  # the release's --drop_rate 0.8, as torch_vgg_step's
  runner = bench.Bench(config, quick=SMOKE, num_devices=1, steps=1, warmup=0)
  config = runner.model_config('vgg16', 3)
  step, step_args, _ = runner.build_classifier_step(config)
  step = step.lower(*step_args).compile()

  model = classifier.build_classifier(config.model, config.data.num_classes)
  images, adjacency = step_args[1]['images'], step_args[1]['adjacency']  # the step's batch
  # The step's own initial weights (copied: the step donates its state, not its batch).
  variables = {'params': jax.tree.map(jax.numpy.copy, step_args[0]['params'])}
  forward = jax.jit(lambda v, x, a: model.apply(v, x, a, train=False)).lower(
      variables, images, adjacency).compile()

  def jax_step():
    nonlocal step_args
    t0 = time.perf_counter()
    out = bench._block(step(*step_args))  # pylint: disable=protected-access
    elapsed = time.perf_counter() - t0
    step_args = bench.carry_state(step_args, out)
    return elapsed

  def jax_forward():
    t0 = time.perf_counter()
    bench._block(forward(variables, images, adjacency))  # pylint: disable=protected-access
    return time.perf_counter() - t0

  torch_server = TorchServer(args.threads, args.torch_no_graph)
  jax_ops = {'step': jax_step, 'forward': jax_forward}
  times = {(fw, op): [] for fw in ('jax', 'torch') for op in jax_ops}
  for op in jax_ops if not SMOKE else ():  # warm-up, untimed
    jax_ops[op]()
    torch_server.time(op)
  for r in range(args.rounds):
    for op, jax_fn in jax_ops.items():
      order = (('jax', jax_fn), ('torch', lambda: torch_server.time(op)))
      for fw, fn in (order if r % 2 == 0 else order[::-1]):
        time.sleep(args.pause)
        times[(fw, op)].append(fn())
      print(json.dumps({'round': r, 'op': op, 'jax_s': round(times[('jax', op)][-1], 3),
                        'torch_s': round(times[('torch', op)][-1], 3)}), flush=True)
  torch_server.close()
  for op in jax_ops:
    jax_s = statistics.median(times[('jax', op)])
    torch_s = statistics.median(times[('torch', op)])
    print(json.dumps({'name': f'versus_torch.{op}', 'jax_s': round(jax_s, 3),
                      'torch_s': round(torch_s, 3), 'jax_over_torch': round(jax_s / torch_s, 3),
                      'rounds': args.rounds, 'torch_graph': not args.torch_no_graph,
                      'xla_flags': os.environ.get('XLA_FLAGS', ''),
                      'date': time.strftime('%Y-%m-%d %H:%M')}), flush=True)


if __name__ == '__main__':
  main()
