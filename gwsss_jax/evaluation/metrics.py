"""One confusion-matrix implementation for CAM, pseudo-label and segmentation evaluation,
and the multi-label classification metrics (mAP, F1) of the classifier.

Segmentation metrics follow the dataset-level convention of WSSS papers: accumulate one
confusion matrix over all images (ignore label excluded), then IoU per class.
"""

from typing import Sequence

import jax.numpy as jnp
import numpy as np

IGNORE = 255


def confusion_matrix(pred, gt, num_classes: int, ignore: int = IGNORE) -> np.ndarray:
  """[num_classes, num_classes] int64 counts, rows = ground truth, cols = prediction.

  Pixels whose ground truth is `ignore` (or outside [0, num_classes)) are not counted.
  A prediction of `ignore` (unlabelled pseudo-label pixel) is not counted either; use
  `coverage` to report how much was labelled.
  """
  pred = np.asarray(pred).reshape(-1).astype(np.int64)
  gt = np.asarray(gt).reshape(-1).astype(np.int64)
  valid = (gt != ignore) & (gt >= 0) & (gt < num_classes) & (pred >= 0) & (pred < num_classes)
  return np.bincount(gt[valid] * num_classes + pred[valid],
                     minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def confusion_matrix_jax(pred, gt, num_classes: int, mask=None, ignore: int = IGNORE):
  """Jittable twin of `confusion_matrix` (masked bincount); sum it across devices with psum."""
  pred = pred.reshape(-1).astype(jnp.int32)
  gt = gt.reshape(-1).astype(jnp.int32)
  valid = (gt != ignore) & (gt >= 0) & (gt < num_classes) & (pred >= 0) & (pred < num_classes)
  if mask is not None:
    valid &= mask.reshape(-1).astype(bool)
  idx = jnp.where(valid, gt * num_classes + pred, 0)
  counts = jnp.bincount(idx, weights=valid.astype(jnp.int32), length=num_classes * num_classes)
  return counts.reshape(num_classes, num_classes).astype(jnp.int32)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
  """IoU per class; NaN for a class absent from both ground truth and prediction."""
  cm = np.asarray(cm, np.float64)
  tp = np.diag(cm)
  denom = cm.sum(0) + cm.sum(1) - tp
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(denom > 0, tp / denom, np.nan)


def segmentation_metrics(cm: np.ndarray, class_names: Sequence[str], prefix: str = '') -> dict:
  """mean_iou, pixel accuracy, and per-class IoU/precision/recall as a flat dict.

  Per-class keys follow scenic's `iou_per_class/{idx:02d}_{name}` naming.
  """
  cm = np.asarray(cm, np.float64)
  iou = iou_per_class(cm)
  tp = np.diag(cm)
  with np.errstate(invalid='ignore', divide='ignore'):
    precision = np.where(cm.sum(0) > 0, tp / cm.sum(0), np.nan)
    recall = np.where(cm.sum(1) > 0, tp / cm.sum(1), np.nan)
  out = {
      f'{prefix}mean_iou': float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float('nan'),
      f'{prefix}pixel_accuracy': float(tp.sum() / max(cm.sum(), 1.0)),
  }
  for i, name in enumerate(class_names):
    out[f'{prefix}iou_per_class/{i:02d}_{name}'] = float(iou[i])
    out[f'{prefix}precision_per_class/{i:02d}_{name}'] = float(precision[i])
    out[f'{prefix}recall_per_class/{i:02d}_{name}'] = float(recall[i])
  return out


def coverage(pred, ignore: int = IGNORE) -> float:
  """Fraction of pixels that carry a label (not `ignore`)."""
  pred = np.asarray(pred)
  return float(np.mean(pred != ignore)) if pred.size else 0.0


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """Per-class AP (VOC-style, non-interpolated: mean precision at each positive), NaN if no
  positive. scores, targets: [N, L]."""
  scores = np.asarray(scores, np.float64)
  targets = np.asarray(targets).astype(bool)
  aps = np.full(scores.shape[1], np.nan)
  for c in range(scores.shape[1]):
    pos = targets[:, c]
    if not pos.any():
      continue
    order = np.argsort(-scores[:, c], kind='stable')
    hits = pos[order]
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    aps[c] = precision_at[hits].mean()
  return aps


def classification_metrics(probs: np.ndarray, targets: np.ndarray,
                           threshold: float = 0.5) -> dict:
  """mAP over classes with positives, and micro-F1 at `threshold`."""
  probs = np.asarray(probs)
  targets = np.asarray(targets).astype(bool)
  pred = probs >= threshold
  tp = float((pred & targets).sum())
  f1 = 2 * tp / max(float(pred.sum() + targets.sum()), 1.0)
  return {'mAP': float(np.nanmean(average_precision(probs, targets))), 'f1': f1}


def format_table(rows: Sequence[tuple], headers: Sequence[str]) -> str:
  """A Markdown table (used for printed summaries and the README)."""
  def fmt(v):
    return f'{v:.4f}' if isinstance(v, float) else str(v)
  lines = ['| ' + ' | '.join(headers) + ' |', '|' + '|'.join('---' for _ in headers) + '|']
  lines += ['| ' + ' | '.join(fmt(v) for v in row) + ' |' for row in rows]
  return '\n'.join(lines)

