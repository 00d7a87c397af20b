"""Dense CRF: the reference (pydensecrf2) on hand-checked properties, and the JAX implementation
against the reference.

Tolerances of the agreement test (10 iterations; the IRNet parameters on 40x56, DeepLab's on
33x47): Q within 2e-3 of the reference's everywhere (float32 rounding in the
lattice's sums, amplified by the iterations, is about 2e-4), and at least 99.5% of the argmax
labels equal.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from gwsss_jax import crf
from gwsss_jax.common.errors import UserError
from gwsss_jax.crf import dense
from gwsss_jax.crf import lattice
from gwsss_jax.crf import reference

pytest.importorskip('pydensecrf.densecrf', reason=reference.INSTALL)

IRNET = crf.Params(10, 3.0, 3.0, 50.0, 5.0, 10.0)
DEEPLAB = crf.Params(10, 1.0, 3.0, 67.0, 3.0, 4.0)


def _scene(h, w, num_labels, seed):
  """A blocky noisy image and probabilities that follow the blocks loosely."""
  rng = np.random.default_rng(seed)
  blocks = lambda *s: np.kron(rng.normal(size=s[:-2] + (h // 8 + 1, w // 8 + 1) + s[-2:][2:]),
                              np.ones((1,) * (len(s) - 2) + (8, 8)))
  img = np.kron(rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3)), np.ones((8, 8, 1)))[:h, :w]
  img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
  logits = blocks(num_labels, 0, 0)[:, :h, :w] + rng.normal(0, 1, (num_labels, h, w))
  p = np.exp(logits)
  return img, (p / p.sum(0)).astype(np.float32)


def _two_colours(h=24, w=32):
  img = np.zeros((h, w, 3), np.uint8)
  img[:, : w // 2] = (200, 30, 30)
  img[:, w // 2:] = (30, 30, 200)
  unary = np.full((2, h, w), -np.log(0.5), np.float32)  # flat ...
  unary[:, h // 2, 2] = -np.log([0.9, 0.1])             # ... but for one seed pixel per side
  unary[:, h // 2, w - 3] = -np.log([0.1, 0.9])
  return img, unary


def test_reference_probabilities_sum_to_one():
  img, p = _scene(24, 32, 4, 0)
  q = reference.inference(crf.unary_from_labels(p.argmax(0), 4, 0.7).transpose(2, 0, 1), img,
                          IRNET)
  assert q.shape == (4, 24, 32) and q.min() >= 0
  np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-5)


def test_reference_unary_of_labels_matches_pydensecrf():
  from pydensecrf.utils import unary_from_labels  # pylint: disable=g-import-not-at-top
  labels = np.random.default_rng(0).integers(0, 3, (5, 7))
  np.testing.assert_allclose(
      crf.unary_from_labels(labels, 3, 0.7).transpose(2, 0, 1).reshape(3, -1),
      unary_from_labels(labels, 3, 0.7, zero_unsure=False), rtol=1e-6)


@pytest.mark.parametrize('impl', ['reference', 'jax'])
def test_flat_unary_splits_along_the_colour_edge(impl):
  img, unary = _two_colours()
  if impl == 'reference':
    labels = reference.inference(unary, img, IRNET).argmax(0)
  else:
    q = dense.mean_field_jit(unary.transpose(1, 2, 0)[None], img[None],
                             np.array([[24, 32]], np.int32), IRNET)
    labels = np.asarray(q[0]).argmax(-1)
  expected = np.zeros((24, 32), np.int64)
  expected[:, 16:] = 1
  np.testing.assert_array_equal(labels, expected)


def test_no_iterations_is_the_softmax_of_the_unary():
  img, p = _scene(16, 16, 3, 1)
  u = crf.unary_from_labels(p.argmax(0), 3, 0.7)
  q = np.asarray(dense.mean_field_jit(u[None], img[None], np.array([[16, 16]], np.int32),
                                      IRNET._replace(iterations=0)))[0]
  e = np.exp(-u)
  np.testing.assert_allclose(q, e / e.sum(-1, keepdims=True), rtol=1e-5)


@pytest.mark.parametrize('params, hw', [(IRNET, (40, 56)), (DEEPLAB, (33, 47))],
                         ids=['irnet', 'deeplab'])
def test_jax_agrees_with_the_reference(params, hw):
  h, w = hw
  img, p = _scene(h, w, 5, sum(hw))
  q_ref = reference.inference(-np.log(np.clip(p, 1e-5, 1)), img, params)
  q = dense.mean_field_jit(dense.unary_from_probs(p.transpose(1, 2, 0))[None], img[None],
                           np.array([hw], np.int32), params)
  q = np.asarray(q[0]).transpose(2, 0, 1)
  assert np.abs(q - q_ref).max() < 2e-3
  assert np.mean(q.argmax(0) == q_ref.argmax(0)) >= 0.995
  assert np.mean(q.argmax(0) != p.argmax(0)) > 0.05  # the CRF did change labels


def _lattice_keys(params):
  img, _ = _scene(33, 47, 3, 7)
  _, bi, _ = dense._features(img, np.array([33, 47]), params)  # pylint: disable=protected-access
  keys = np.asarray(lattice._simplex(bi)[0]).reshape(-1, 5)  # pylint: disable=protected-access
  return bi, len(np.unique(keys, axis=0))


def test_lattice_points_are_the_distinct_simplex_vertices():
  bi, distinct = _lattice_keys(DEEPLAB)
  assert int(lattice.count_points(bi)) == distinct


def test_keys_equal_in_the_sort_hashes_fall_back_to_the_exact_order(monkeypatch):
  """The fast sort orders vertices by hashes of their keys; where distinct keys share them it
  would merge their lattice points, so the collision check must send it to the exact sort.
  Here both sort hashes take 4 values, the check's hash stays whole."""
  bi, distinct = _lattice_keys(DEEPLAB)
  full_hash = lattice._hash  # pylint: disable=protected-access

  def weak(keys, mult=lattice._HASH_MULT):  # pylint: disable=protected-access
    if mult is lattice._HASH_MULT3:  # pylint: disable=protected-access
      return full_hash(keys, mult)
    return keys[..., 0] & 3
  monkeypatch.setattr(lattice, '_hash', weak)
  assert distinct > 100  # so 4 hash values would merge most of them without the fallback
  assert int(lattice.count_points(bi)) == distinct


def test_padded_batch_and_devices_give_the_labels_of_single_images(monkeypatch):
  """Two images of different sizes padded into one batch, split over 2 simulated devices, with
  lattice tables too small for them (the labeller must notice and run with larger ones)."""
  monkeypatch.setattr(dense, 'CAPACITY_PER_PIXEL', 0.05)
  assert len(jax.devices()) >= 2
  params = IRNET._replace(iterations=5)
  scenes = [_scene(24, 40, 3, 5), _scene(32, 28, 3, 6)]
  unary = np.full((2, 32, 40, 3), crf.PAD_ENERGY, np.float32)
  rgb = np.zeros((2, 32, 40, 3), np.uint8)
  singles = []
  for i, (img, p) in enumerate(scenes):
    h, w = img.shape[:2]
    u = dense.unary_from_probs(p.transpose(1, 2, 0))
    unary[i, :h, :w], rgb[i, :h, :w] = u, img
    singles.append(reference.inference(np.asarray(u).transpose(2, 0, 1), img, params).argmax(0))
  hw = np.array([s[0].shape[:2] for s in scenes], np.int32)
  labels = dense.make_labeller(params, jax.devices()[:2])(unary, rgb, hw)
  for i, single in enumerate(singles):
    h, w = single.shape
    assert np.mean(labels[i, :h, :w] == single) >= 0.995


def test_missing_pydensecrf_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, 'pydensecrf.densecrf', None)
  with pytest.raises(UserError, match=r'cams\.crf.*requirements-crf\.txt'):
    reference.require('cams.crf')


def test_auto_takes_the_reference_on_a_cpu_where_it_imports_else_jax(monkeypatch):
  assert jax.default_backend() == 'cpu'
  # pydensecrf2 imports here (module skip above)
  assert crf.resolve_impl('auto')[0] == 'reference'
  for backend, available, chosen in [('cpu', True, 'reference'), ('cpu', False, 'jax'),
                                     ('gpu', True, 'jax'), ('tpu', False, 'jax')]:
    assert crf.resolve_impl('auto', backend, available)[0] == chosen, (backend, available)
  for impl in ('reference', 'jax'):  # an explicit choice stands
    assert crf.resolve_impl(impl, 'gpu', False)[0] == impl
  assert crf.resolve_impl('auto', 'gpu', True)[1] == "jax; crf.impl='auto' on gpu"
  assert crf.resolve_impl('jax', 'cpu', True)[1] == 'jax'
  monkeypatch.setitem(sys.modules, 'pydensecrf.densecrf', None)
  assert not reference.available()
  assert crf.resolve_impl('auto') == ('jax', "jax; crf.impl='auto' on a CPU without pydensecrf2")
  with pytest.raises(UserError, match='requirements-crf'):  # the explicit choice still says how
    reference.require('seg.crf')


@pytest.mark.slow
def test_documented_agreement_commands_on_the_builtin_dataset(tmp_path):
  """docs/crf.md's two built-in-dataset commands, exactly as written, in smoke mode (3 images)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root, GWSSS_BENCH_SMOKE='1',
             PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', ''))
  out = ''
  commands = (
      'python -m gwsss_jax.data.synthetic --out runs/crf_synthetic --num_train 1 --num_val 48',
      'python -m benchmarks.crf_agreement --voc=runs/crf_synthetic --num_labels=7 --num_images=48')
  for cmd in commands:
    proc = subprocess.run(['bash', '-c', cmd], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
  rows = {r['setting']: r for r in map(json.loads, out.splitlines())}
  assert set(rows) == {'seg', 'cams'}, out
  for r in rows.values():
    assert r['images'] == 3 and r['label_agreement'] >= 0.98, r
    assert abs(r['miou_jax'] - r['miou_reference']) <= 0.003, r
