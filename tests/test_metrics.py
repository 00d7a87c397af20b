"""The shared confusion matrix and mIoU against hand-computed values and an independent
per-class set computation."""

import jax.numpy as jnp
import numpy as np
import pytest

from gwsss_jax.evaluation import metrics


def test_confusion_matrix_by_hand():
  gt = np.array([[0, 0, 1, 1],
                 [2, 2, 255, 1]])
  pred = np.array([[0, 1, 1, 1],
                   [2, 0, 2, 255]])
  cm = metrics.confusion_matrix(pred, gt, 3)
  # Pixels (gt -> pred): 0->0, 0->1, 1->1, 1->1, 2->2, 2->0; gt 255 and pred 255 not counted.
  expected = np.array([[1, 1, 0],
                       [0, 2, 0],
                       [1, 0, 1]])
  np.testing.assert_array_equal(cm, expected)
  # IoU: class 0: 1 / (2 + 2 - 1) = 1/3; class 1: 2 / (2 + 3 - 2) = 2/3; class 2: 1 / (2 + 1 - 1).
  np.testing.assert_allclose(metrics.iou_per_class(cm), [1 / 3, 2 / 3, 1 / 2])
  out = metrics.segmentation_metrics(cm, ('bg', 'a', 'b'), prefix='x/')
  assert out['x/mean_iou'] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
  assert out['x/pixel_accuracy'] == pytest.approx(4 / 6)
  assert out['x/precision_per_class/00_bg'] == pytest.approx(1 / 2)  # column 0: 1 of 2
  assert out['x/recall_per_class/01_a'] == pytest.approx(1.0)
  assert out['x/iou_per_class/02_b'] == pytest.approx(0.5)


def _set_iou(pred, gt, c, ignore=255):
  """IoU of class c from pixel sets (no confusion matrix)."""
  valid = (gt != ignore) & (pred != ignore)
  p, g = (pred == c) & valid, (gt == c) & valid
  union = np.count_nonzero(p | g)
  return np.nan if union == 0 else np.count_nonzero(p & g) / union


def test_miou_matches_set_computation_and_jax_twin():
  rng = np.random.default_rng(0)
  num_classes = 5
  gt = rng.integers(0, num_classes, (3, 17, 23))
  gt[rng.random(gt.shape) < 0.1] = 255
  pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, num_classes, gt.shape))
  pred[rng.random(gt.shape) < 0.05] = 255
  pred[pred == 4] = 3  # class 4 never predicted
  cm = metrics.confusion_matrix(pred, gt, num_classes)
  expected = [_set_iou(pred, gt, c) for c in range(num_classes)]
  np.testing.assert_allclose(metrics.iou_per_class(cm), expected)
  cm_jax = metrics.confusion_matrix_jax(jnp.asarray(pred), jnp.asarray(gt), num_classes)
  np.testing.assert_array_equal(np.asarray(cm_jax), cm)


def test_absent_class_is_nan_and_excluded_from_mean():
  gt = np.array([0, 0, 1, 1])
  pred = np.array([0, 0, 1, 0])
  out = metrics.segmentation_metrics(metrics.confusion_matrix(pred, gt, 3), ('bg', 'a', 'b'))
  assert np.isnan(out['iou_per_class/02_b'])
  assert out['mean_iou'] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_coverage():
  assert metrics.coverage(np.array([[0, 255], [3, 255]])) == 0.5
