"""The README and docs/: the README stays short, links resolve, and every command they give in a
```bash block is either run here exactly as written or marked `# needs: ...` (data, a GPU or
TPU, a network, or a quiet machine for a timing) on a line above it in its block."""

import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ['README.md'] + sorted(os.path.relpath(p, ROOT)
                              for p in glob.glob(os.path.join(ROOT, 'docs', '*.md')))
# Being written on other branches; the README links them already. Remove a name once it exists.
PENDING = {'docs/crf.md', 'docs/accelerators.md'}
NEEDS = ('data', 'GPU', 'TPU', 'network', 'quiet machine')
BENCH_QUICK = 'python -m gwsss_jax.bench --config=configs/demo.py --quick'

# Every command without a `# needs:` line -> (working directory, whether it is slow).
RUN_HERE = {
    'python -m gwsss_jax.data.synthetic --out runs/synthetic --num_train 20 --num_val 10':
        ('tmp', False),
    BENCH_QUICK: ('repo', True),
    'python -c "from gwsss_jax.data import sampler; sampler.benchmark()"': ('tmp', True),
    'python -m gwsss_jax.sweep --config=configs/msrc.py --sweep=configs/sweeps/msrc_groupwise.py '
    '--workdir=runs/msrc_groupwise --seeds=0,1,2 --print_commands': ('repo', False),
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
  assert unmarked == set(RUN_HERE), (
      f'commands neither marked `# needs:` nor run here: {sorted(unmarked - set(RUN_HERE))}; '
      f'run here but no longer in the docs: {sorted(set(RUN_HERE) - unmarked)}')


def _params():
  for cmd, (_, slow) in RUN_HERE.items():
    marks = [pytest.mark.slow] if slow else []
    yield pytest.param(cmd, marks=marks, id=cmd.split()[2] if cmd.startswith('python -m') else cmd[:40])


@pytest.mark.parametrize('cmd', list(_params()))
def test_command_runs_as_written(cmd, tmp_path):
  cwd = ROOT if RUN_HERE[cmd][0] == 'repo' else str(tmp_path)
  # Compilation dominates at these sizes: skip XLA's backend optimisations (speed is not tested).
  xla_flags = (os.environ.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0'
               ' --xla_llvm_disable_expensive_passes=true')
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS=xla_flags,
             PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', ''))
  proc = subprocess.run(['bash', '-c', cmd], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=900, check=False)
  if cmd == BENCH_QUICK and 'FlagHolder' in proc.stderr:  # a known bug, fixed on another branch
    pytest.xfail('bench --quick assigns to an absl FlagHolder')
  assert proc.returncode == 0, proc.stderr[-3000:]
  if 'gwsss_jax.data.synthetic' in cmd:
    names = open(os.path.join(cwd, 'runs/synthetic/ImageSets/Segmentation/train.txt')).read().split()
    assert len(names) == 20
