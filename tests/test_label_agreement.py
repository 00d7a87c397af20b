"""benchmarks/label_agreement.py: figures checked against hand-counted pixels."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import label_agreement
from gwsss_jax.common.errors import UserError
from gwsss_jax.data import palette

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(directory, name, arr):
  os.makedirs(directory, exist_ok=True)
  palette.save_label_png(os.path.join(directory, name + '.png'), np.asarray(arr, np.uint8))


def test_counts_by_hand(tmp_path):
  a, b, gt = (str(tmp_path / d) for d in 'abg')
  # 2x3: a and b differ in one pixel; one pixel is void in gt; one is 255 in both labels.
  _write(a, 'x', [[0, 1, 1], [2, 255, 0]])
  _write(b, 'x', [[0, 1, 2], [2, 255, 0]])
  _write(gt, 'x', [[0, 1, 1], [255, 2, 0]])
  out = label_agreement.compare(a, b, gt, num_classes=3)
  # Counted: not (255 in both), not void in gt -> pixels (0,0) (0,1) (0,2) (1,2): 4, 3 equal.
  assert out['pixels'] == 4 and out['agreement'] == pytest.approx(3 / 4)
  # a against gt over counted pixels: class 0: 2/2, class 1: 2/2, class 2: gt pixel (1,1) is
  # predicted 255 -> not counted, so class 2 is absent -> mean of 1, 1.
  assert out['miou_a'] == pytest.approx(1.0)
  # b: class 0 IoU 1; class 1: tp 1, gt 2, pred 1 -> 1/2; class 2: tp 0, pred 1 -> 0.
  assert out['miou_b'] == pytest.approx((1 + 0.5 + 0) / 3)


def test_size_mismatch_names_the_file(tmp_path):
  a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
  _write(a, 'img7', np.zeros((2, 2)))
  _write(b, 'img7', np.zeros((2, 3)))
  with pytest.raises(UserError, match='img7.png'):
    label_agreement.compare(a, b)


def test_command_line(tmp_path):
  a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
  _write(a, 'x', [[1, 1], [0, 0]])
  _write(b, 'x', [[1, 0], [0, 0]])
  proc = subprocess.run([sys.executable, '-m', 'benchmarks.label_agreement', f'--a={a}',
                         f'--b={b}'], cwd=ROOT, capture_output=True, text=True, check=True)
  out = json.loads(proc.stdout)
  assert out == {'images': 1, 'pixels': 4, 'agreement': 0.75}
