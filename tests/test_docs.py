"""The README and docs/: the README stays short, links resolve, and every command they give in a
```bash block is either run here exactly as written or marked `# needs: ...` (data, a GPU or
TPU, a network) on a line above it in its block. A benchmark whose figures need a quiet machine
is still run, in its smoke mode (GWSSS_BENCH_SMOKE=1, benchmarks/smoke.py), and its output lines
are checked."""

import glob
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ['README.md'] + sorted(os.path.relpath(p, ROOT)
                              for p in glob.glob(os.path.join(ROOT, 'docs', '*.md')))
# Being written on other branches; the README links them already. Remove a name once it exists.
PENDING = set()
NEEDS = ('data', 'GPU', 'TPU', 'network')

SMOKE = {'GWSSS_BENCH_SMOKE': '1'}
# Every command without a `# needs:` line -> (working directory, whether it is slow, extra
# environment).
RUN_HERE = {
    'python -m gwsss_jax.data.synthetic --out runs/synthetic --num_train 20 --num_val 10':
        ('tmp', False, {}),
    'python -c "from gwsss_jax.data import sampler; sampler.benchmark()"': ('tmp', True, {}),
    'python -m benchmarks.versus_torch --rounds=8': ('tmp', True, SMOKE),
    'python -m benchmarks.versus_torch --rounds=8 --torch_no_graph': ('tmp', True, SMOKE),
    'python -m benchmarks.conv_ops': ('tmp', True, SMOKE),
    'python -m benchmarks.pool_ops': ('tmp', True, SMOKE),
    'python -m gwsss_jax.bench --config=configs/demo.py --only=crf --steps=3': ('repo', True, SMOKE),
    'python -m benchmarks.loaders --config=configs/demo.py --rounds=5 --batches=20':
        ('repo', True, SMOKE),
    'python -m benchmarks.crf_kernels --rounds=5': ('repo', True, SMOKE),
}
# Commands that another test runs exactly as written (and checks its output) -> that test.
RUN_ELSEWHERE = {
    'python -m gwsss_jax.bench --config=configs/demo.py --quick': 'tests/test_bench.py',
    'bash benchmarks/device_check.sh --quick': 'tests/test_device_check.py',
    'bash benchmarks/msrc_device.sh --quick': 'tests/test_msrc_device.py',
    'python -m gwsss_jax.sweep --config=configs/msrc.py --sweep=configs/sweeps/msrc_groupwise.py '
    '--workdir=runs/msrc_groupwise --seeds=0,1,2 --print_commands': 'tests/test_sweep.py',
    'python -m gwsss_jax.data.synthetic --out runs/crf_synthetic --num_train 1 --num_val 48':
        'tests/test_crf.py',
    'python -m benchmarks.crf_agreement --voc=runs/crf_synthetic --num_labels=7 --num_images=48':
        'tests/test_crf.py',
}


def _commands(path):
  """(command, needs) for each command of each ```bash block of `path`."""
  text = open(os.path.join(ROOT, path), encoding='utf-8').read()
  found = []
  for block in re.findall(r'^```bash\n(.*?)^```', text, re.S | re.M):
    needs, pending = None, ''
    for line in block.splitlines():
      stripped = line.strip()
      if stripped.startswith('# needs:'):
        needs = stripped[len('# needs:'):].strip()
        continue
      if not pending and (not stripped or stripped.startswith('#')):
        continue
      code = re.split(r'\s+#\s', line)[0].rstrip() if not line.rstrip().endswith('\\') else line
      if code.endswith('\\'):
        pending += code[:-1].rstrip() + ' '
        continue
      found.append(((pending + code.strip()).strip(), needs))
      pending = ''
  return found


ALL = [(path, cmd, needs) for path in DOCS for cmd, needs in _commands(path)]


def test_readme_is_short():
  with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
    assert len(f.read().splitlines()) <= 300


@pytest.mark.parametrize('path', DOCS)
def test_links_resolve(path):
  text = open(os.path.join(ROOT, path), encoding='utf-8').read()
  for target in re.findall(r'\]\(([^)#\s]+)\)', text):
    if re.match(r'[a-z]+://', target):
      continue
    full = os.path.normpath(os.path.join(ROOT, os.path.dirname(path), target))
    if os.path.relpath(full, ROOT) in PENDING:
      continue
    assert os.path.exists(full), f'{path}: link to missing {target}'


def test_every_command_is_run_here_or_marked():
  assert ALL, 'no ```bash blocks found'
  for path, cmd, needs in ALL:
    if needs is not None:
      assert any(n in needs for n in NEEDS), f'{path}: `# needs: {needs}` names none of {NEEDS}'
  unmarked = {cmd for _, cmd, needs in ALL if needs is None}
  run = set(RUN_HERE) | set(RUN_ELSEWHERE)
  assert unmarked == run, (
      f'commands neither marked `# needs:` nor run by a test: {sorted(unmarked - run)}; '
      f'run but no longer in the docs: {sorted(run - unmarked)}')
  for cmd, test in RUN_ELSEWHERE.items():
    with open(os.path.join(ROOT, test), encoding='utf-8') as f:
      assert f"'{cmd}'" in f.read(), f'{test} does not run `{cmd}`'


def _params():
  for cmd, (_, slow, _) in RUN_HERE.items():
    marks = [pytest.mark.slow] if slow else []
    name = ' '.join(cmd.split()[2:]) if cmd.startswith('python -m') else cmd[:40]
    yield pytest.param(cmd, marks=marks, id=name)


@pytest.mark.parametrize('cmd', list(_params()))
def test_command_runs_as_written(cmd, tmp_path):
  where, _, extra_env = RUN_HERE[cmd]
  cwd = ROOT if where == 'repo' else str(tmp_path)
  # Compilation dominates at these sizes: skip XLA's backend optimisations (speed is not tested).
  xla_flags = (os.environ.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0'
               ' --xla_llvm_disable_expensive_passes=true')
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS=xla_flags, **extra_env,
             PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', ''))
  proc = subprocess.run(['bash', '-c', cmd], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  if 'gwsss_jax.data.synthetic' in cmd:
    names = open(os.path.join(cwd, 'runs/synthetic/ImageSets/Segmentation/train.txt')).read().split()
    assert len(names) == 20
  if cmd.startswith('python -m benchmarks.'):
    assert 'GWSSS_BENCH_SMOKE=1' in proc.stderr  # the smoke mode was on
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    _check_figures(cmd.split()[2], cmd, records)
  if cmd.startswith('python -m gwsss_jax.bench'):
    assert 'GWSSS_BENCH_SMOKE=1' in proc.stderr
    names = {json.loads(line)['name'] for line in proc.stdout.splitlines() if line.startswith('{')}
    assert {'crf.jax.images_per_s', 'crf.reference.images_per_s'} <= names, proc.stdout


# The figure lines of each CPU benchmark in smoke mode: each row once, a time (a tiny torch op
# may round to 0 ms), positive totals.
CONV_LAYERS = ('conv1_1', 'conv1_2', 'conv2_1', 'conv2_2', 'conv3_1', 'conv3_2', 'conv4_1',
               'conv4_2', 'conv5_1')
CONV_OPS = {'jax': ('fwd', 'bwd_input', 'bwd_filter', 'bwd_filter_taps', 'bwd_filter_im2col'),
            'torch': ('fwd', 'bwd_input', 'bwd_filter')}
POOL_IMPLS = ('xla_reduce_window', 'gwsss_pooling', 'torch')


def _check_figures(module, cmd, records):
  if module == 'benchmarks.versus_torch':
    rounds = [(r['round'], r['op']) for r in records if 'round' in r]
    assert rounds == [(0, 'step'), (0, 'forward')], records  # smoke: one round
    summary = {r['name']: r for r in records if 'name' in r}
    assert set(summary) == {'versus_torch.step', 'versus_torch.forward'}, records
    for r in summary.values():
      assert r['jax_s'] > 0 and r['torch_s'] > 0 and r['jax_over_torch'] > 0, r
      assert r['rounds'] == 1 and r['torch_graph'] == ('--torch_no_graph' not in cmd), r
    assert len(records) == 4, records
  elif module == 'benchmarks.conv_ops':
    rows = [(r['layer'], r['op'], r['fw']) for r in records]
    want = [(layer, op, fw) for layer in CONV_LAYERS for fw, ops in CONV_OPS.items()
            for op in ops]
    assert sorted(rows) == sorted(want + [('ALL13', op, fw) for fw, ops in CONV_OPS.items()
                                          for op in ops]), rows
    assert all(r['ms'] >= 0 and (r['ms'] > 0 or r['layer'] != 'ALL13') for r in records), records
    assert all(r['gflops'] >= 0 for r in records if r['layer'] != 'ALL13'), records
  elif module == 'benchmarks.pool_ops':
    rows = [(r['pool'], r['impl'], r['op']) for r in records]
    want = [(pool, impl, op) for pool in ('pool1', 'pool2', 'pool3', 'pool4', 'all4')
            for impl in POOL_IMPLS for op in ('fwd', 'fwd+grad')]
    assert sorted(rows) == sorted(want), rows
    assert all(r['ms'] >= 0 and (r['ms'] > 0 or r['pool'] != 'all4') for r in records), records
  elif module == 'benchmarks.loaders':
    rounds = [(r['round'], r['loader']) for r in records if 'round' in r]
    assert rounds == [(0, 'tf'), (0, 'numpy')], records  # smoke: one round
    summary = records[-1]
    assert summary['name'] == 'loaders.numpy_over_tf' and summary['rounds'] == 1, records
    assert summary['value'] > 0 and summary['tf_groups_per_s'] > 0, records
    assert len(records) == 3, records
  elif module == 'benchmarks.crf_kernels':
    parts = sorted((r['kernels'], r['side'], r['part']) for r in records if 'part' in r)
    want = [(k, 'jax', 'total') for k in ('both', 'bilateral', 'gaussian')]
    want += [(k, 'reference', p) for k in ('both', 'bilateral', 'gaussian')
             for p in ('setup', 'total')]
    want += [(k, 'jax', p) for k in ('bilateral', 'gaussian') for p in ('lattice', 'filter')]
    assert parts == sorted(want), parts
    assert all(r['cpu_ms'] > 0 and r['rounds'] == 1 for r in records if 'part' in r), records
    ratios = {r['kernels']: r['jax_over_reference_cpu'] for r in records if 'part' not in r}
    assert set(ratios) == {'both', 'bilateral', 'gaussian'}, records
    assert all(v > 0 for v in ratios.values()), ratios  # the dev install has pydensecrf2
  else:
    raise AssertionError(f'no figure check for {cmd}')
