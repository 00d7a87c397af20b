"""The device check's smoke test: `bash benchmarks/device_check.sh --quick`, exactly as
docs/accelerators.md gives it, on the CPU with TensorFlow, tfds, clu and pycocotools hidden (as on
the GPU machine), prints one JSON line per figure and writes them with a Markdown table."""

import json
import os
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_COMMAND = 'bash benchmarks/device_check.sh --quick'  # as in docs/accelerators.md

FIGURES = {'paper_step_bf16', 'paper_step_bf16_max_batch', 'paper_step_fp32',
           'release_step_jax', 'release_step_torch_eager', 'release_step_torch_compile',
           'deeplab_step_bf16', 'cam_export'}
# The crf part: JAX's figures always; the reference's only where pydensecrf2 is installed.
CRF_JAX = {'crf.jax.compile_time', 'crf.jax.images_per_s', 'crf.jax.cpu_s_per_image'}
CRF_REFERENCE = {'crf.reference.images_per_s', 'crf.reference.cpu_s_per_image',
                 'crf.jax_over_reference', 'crf.jax_over_reference_cpu'}


@pytest.mark.slow
def test_documented_quick_device_check(tmp_path):
  with open(os.path.join(ROOT, 'docs', 'accelerators.md')) as f:
    assert QUICK_COMMAND in f.read()
  env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable,
             PYTHONPATH=os.pathsep.join([os.path.join(ROOT, 'tests', 'no_tensorflow'), ROOT]))
  env.pop('XLA_FLAGS', None)  # the check's parts run on one device, as on the GPU
  proc = subprocess.run(shlex.split(QUICK_COMMAND), cwd=ROOT, capture_output=True, text=True,
                        timeout=900, env=env)
  assert proc.returncode == 0, proc.stderr[-4000:]
  records = [json.loads(l) for l in proc.stdout.splitlines() if l.strip()]
  by_name = {r['name']: r for r in records}
  crf = {n for n in by_name if n.startswith('crf.')}
  assert set(by_name) - crf == FIGURES, (sorted(by_name), proc.stderr[-4000:])
  assert crf in (CRF_JAX | {'crf.reference.images_per_s'}, CRF_JAX | CRF_REFERENCE), sorted(crf)
  for name in crf - {'crf.reference.images_per_s'}:
    assert by_name[name]['value'] > 0 and by_name[name]['quick'] is True, by_name[name]
  for name in FIGURES - {'release_step_torch_compile'}:
    r = by_name[name]
    assert r['value'] > 0 and r['step_s'] > 0 and 'error' not in r, r
    assert 'mfu' in r and 'device_memory_peak_gib' in r and r['quick'] is True
  assert by_name['paper_step_bf16']['per_device_batch'] == 1
  assert by_name['paper_step_bf16_max_batch']['per_device_batch'] == 2
  assert by_name['paper_step_bf16_max_batch']['dtype'] == 'bfloat16'
  assert by_name['release_step_torch_eager']['jax_speedup'] > 0
  assert by_name['release_step_torch_compile']['value'] is None  # skipped with --quick
  assert 'skipped' in by_name['release_step_torch_compile']['error']
  with open(tmp_path / 'device_check.jsonl') as f:
    assert [json.loads(l) for l in f] == records
  table = (tmp_path / 'device_check.md').read_text()
  assert table.count('\n| ') == len(records) + 1  # header row + one row per figure
  assert '| release_step_torch_compile |' in table and 'failed' in table


@pytest.mark.slow
def test_release_part_without_pytorch_still_times_jax(tmp_path):
  """Where PyTorch is missing (or its server fails), the JAX release step is timed alone."""
  env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, GWSSS_HIDE='torch',
             PYTHONPATH=os.pathsep.join([os.path.join(ROOT, 'tests', 'no_tensorflow'), ROOT]))
  env.pop('XLA_FLAGS', None)
  proc = subprocess.run(shlex.split(QUICK_COMMAND) + ['--parts=release'], cwd=ROOT,
                        capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-4000:]
  by_name = {r['name']: r for r in map(json.loads, filter(str.strip, proc.stdout.splitlines()))}
  assert set(by_name) == {'release_step_jax', 'release_step_torch_eager',
                          'release_step_torch_compile'}, sorted(by_name)
  jax_fig = by_name['release_step_jax']
  assert jax_fig['value'] > 0 and jax_fig['step_s'] > 0 and 'timed alone' in jax_fig['note']
  assert by_name['release_step_torch_eager']['value'] is None
  assert 'error' in by_name['release_step_torch_eager']


def test_largest_batch_estimate():
  from benchmarks import device_check

  class Device:
    def __init__(self, limit):
      self.limit = limit

    def memory_stats(self):
      return {'bytes_limit': self.limit}

  gib = 1024**3
  # 1 GiB of state (donated: arguments aliased by the outputs), 2 GiB of temporaries per group:
  # (0.85 x 40 - 1) / 2 = 16.5 groups.
  memory = {'arguments': gib, 'outputs': gib, 'aliased': gib, 'temp': 2 * gib}
  assert device_check.largest_batch(memory, Device(40 * gib), quick=False) == 16
  assert device_check.largest_batch(memory, Device(400 * gib), quick=False) == 64  # the cap
  assert device_check.largest_batch(None, Device(40 * gib), quick=False) == 1
  assert device_check.largest_batch(memory, Device(None), quick=False) == 1
