"""benchmarks/msrc_device.py and benchmarks/msrc_device.sh: MSRC-v2 and the weights packed for a
GPU machine and unpacked there, and the paper-scale comparison's script in its smoke mode, run
as docs/groupwise.md gives it, with TensorFlow, tfds and clu hidden as on that machine."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from benchmarks import msrc_device
from gwsss_jax.data import msrc
from gwsss_jax.models import convert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCKER = os.path.join(ROOT, 'tests', 'no_tensorflow')


def test_pack_and_unpack_keep_the_images_labels_and_weights(tmp_path):
  src, packed, out = tmp_path / 'msrc', tmp_path / 'packed', tmp_path / 'out'
  msrc_device.fixture(str(src), per_category=3)
  rng = np.random.default_rng(0)
  weights = {'params': {'conv1_1': {'kernel': rng.normal(size=(3, 3, 3, 8)).astype(np.float32),
                                    'bias': rng.normal(size=(8,)).astype(np.float32)}}}
  convert.save_pretrained(str(tmp_path / 'w'), weights, 'caffe_bgr', 'test', 'vgg16')
  msrc_device.pack(str(src), str(tmp_path / 'w'), str(packed))
  msrc_device.unpack(str(packed), str(out))
  names = sorted(os.listdir(src / 'Images'))
  assert sorted(os.listdir(out / 'Images')) == names and len(names) == 12
  for name in names:
    a = np.asarray(Image.open(src / 'Images' / name), np.float32)
    b = np.asarray(Image.open(out / 'Images' / name), np.float32)
    assert a.shape == b.shape and np.abs(a - b).mean() < 3.0  # JPEG quality 95
    mat = name.replace('.bmp', '_GT.mat')
    np.testing.assert_array_equal(msrc.read_mat(str(out / 'newsegmentations_mats' / mat)),
                                  msrc.read_mat(str(src / 'newsegmentations_mats' / mat)))
  half, meta = convert.load_pretrained(str(packed / 'vgg16_fp16'), arch='vgg16')
  assert meta['normalization']['name'] == 'caffe_bgr' and 'float16' in meta['source']
  for key in ('kernel', 'bias'):
    got = half['params']['conv1_1'][key]
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, weights['params']['conv1_1'][key].astype(np.float16))


@pytest.mark.slow
def test_the_device_script_runs_in_its_smoke_mode(tmp_path):
  # A stand-in nvidia-smi, 40% busy: the script samples the GPU while the runs share it.
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'nvidia-smi').write_text(
      '#!/usr/bin/env bash\necho "timestamp, utilization.gpu [%], memory.used [MiB]"\n'
      'while true; do echo "2026/11/27 00:00:00.000, 40 %, 100 MiB"; sleep 0.2; done\n')
  (bin_dir / 'nvidia-smi').chmod(0o755)
  env = dict(os.environ, OUT=str(tmp_path / 'out'), PYTHON=sys.executable,
             PYTHONPATH=os.pathsep.join([BLOCKER, ROOT]),
             PATH=os.pathsep.join([str(bin_dir), os.environ.get('PATH', '')]))
  env.pop('XLA_FLAGS', None)  # one CPU device, as the script's batches of 1 group need
  proc = subprocess.run(['bash', '-c', 'bash benchmarks/msrc_device.sh --quick'], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  timing = (tmp_path / 'out' / 'timing.txt').read_text().splitlines()
  assert len(timing) == 3 and all(' rc=0 ' in line for line in timing), timing
  assert all('--config.data.loader=numpy' in line for line in timing), timing
  rows = [line for line in (tmp_path / 'out' / 'msrc_full.md').read_text().splitlines()
          if line.startswith(('| single_image_K1 ', '| group_K4_T3 ', '| release_K3_T3 '))]
  assert len(rows) == 3 and all(r.count('(n=1)') == 4 for r in rows), rows
  # The CSV lists every variant of the sweep; those ONLY leaves out by default have no figures.
  seeds = (tmp_path / 'out' / 'msrc_full_seeds.csv').read_text().splitlines()[1:]
  assert [s.split(',')[0] for s in seeds] == [
      'single_image_K1', 'single_image_K1_b3', 'group_K4_T3', 'release_K3_T3',
      'release_K3_T3_lr2x', 'group_K4_T3_small_graph'], seeds
  assert [bool(s.split(',')[2]) for s in seeds] == [True, False, True, True, False, False], seeds
  probes = (tmp_path / 'out' / 'graph_probe.txt').read_text().splitlines()
  assert len(probes) == 3, probes
  assert all('graph_probe: ' in p and 'R^2 median' in p for p in probes), probes
  assert any(p.startswith('single_image_K1/seed0: ') and '(paper, T = 0)' in p for p in probes)
  assert '# GPU busy 40% of the time on average' in proc.stdout, proc.stdout[-3000:]
  assert (tmp_path / 'out' / 'gpu_util.csv').read_text().count('40 %') >= 2
