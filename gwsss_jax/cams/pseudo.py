"""Pseudo-label rules: from per-class CAMs (and a saliency map) to a label map. Pure numpy.

Labels follow the VOC convention: 0 background, c + 1 for class index c (0..L-1), 255 ignore.
`keys` always holds class indices without background, as in IRNet's CAM files. The labels of a
run live in `<workdir>/pseudo_labels/<name>.png` (`label_path`).
"""

import os

import numpy as np

IGNORE = 255
CAM_NORMS = ('max', 'minmax')


def label_dir(workdir: str) -> str:
  return os.path.join(workdir, 'pseudo_labels')


def label_path(workdir: str, name: str) -> str:
  return os.path.join(label_dir(workdir), name + '.png')


def normalize_maps(cams) -> np.ndarray:
  """[n, H, W] float32: negatives clipped, each map divided by its max + 1e-5 (IRNet's
  make_cam; an all-zero map stays 0)."""
  cams = np.maximum(np.asarray(cams, np.float32), 0.0)
  if cams.size == 0:
    return cams
  peak = cams.reshape(cams.shape[0], -1).max(1)
  return cams / (peak + 1e-5)[:, None, None]


def minmax_maps(cams) -> np.ndarray:
  """[n, H, W] float32: each map scaled to 0..1 by (a - min) / (max - min + 1e-8), the release's
  gen_labels.py (an all-constant map becomes 0). Computed in float64, as numpy does there on
  the uint8 maps it reads."""
  cams = np.asarray(cams, np.float64)
  if cams.size == 0:
    return cams.astype(np.float32)
  flat = cams.reshape(cams.shape[0], -1)
  lo, hi = flat.min(1)[:, None, None], flat.max(1)[:, None, None]
  return ((cams - lo) / (hi - lo + 1e-8)).astype(np.float32)


def scale_maps(cams, cam_norm: str) -> np.ndarray:
  """The class maps scaled to 0..1 by `pseudo.cam_norm`: 'max' (`normalize_maps`) or 'minmax'
  (`minmax_maps`)."""
  if cam_norm not in CAM_NORMS:
    raise ValueError(f'cam_norm must be one of {CAM_NORMS}, got {cam_norm!r}')
  return minmax_maps(cams) if cam_norm == 'minmax' else normalize_maps(cams)


def label_values(keys) -> np.ndarray:
  """[n + 1] uint8: the label of each score channel (background first): 0, keys + 1."""
  return np.concatenate([[0], np.asarray(keys, np.int64).reshape(-1) + 1]).astype(np.uint8)


def threshold_label(cams, keys, bg_threshold: float, refine=None) -> np.ndarray:
  """IRNet's CAM labelling (eval_cam / make_sem_seg_labels without CRF): argmax over a constant
  background score `bg_threshold` and the class maps. Ties go to background.

  Args:
    cams: [n, H, W] maps in 0..1 of the image's classes `keys` (n may be 0).
    keys: [n] class indices (0..L-1, background excluded).
    bg_threshold: the background score (config.cams.bg_threshold).
    refine: optional `refine(channel_index [H, W], num_channels) -> channel_index`, the dense
      CRF of IRNet's cam_to_ir_label, applied to the argmax.

  Returns:
    uint8 [H, W] labels in {0} U {keys + 1}.
  """
  cams = np.asarray(cams, np.float32)
  scores = np.concatenate([np.full((1,) + cams.shape[1:], bg_threshold, np.float32), cams])
  return label_values(keys)[_argmax(scores, refine)]


def _argmax(scores, refine):
  index = np.argmax(scores, axis=0)
  return index if refine is None else refine(index, scores.shape[0])


def saliency_label(cams, keys, saliency, conflict_threshold: float = 0.9,
                   saliency_bg_threshold: float = 32, fg_ignore_threshold: float = 0.8,
                   min_fg_fraction: float = 0.01, cam_norm: str = 'max',
                   refine=None) -> np.ndarray:
  """The release's rules with a saliency map (REFERENCE_NOTES, "Pseudo labels"):

  1. background score = 1 - saliency / 255; each class map scaled to 0..1 (`cam_norm`: 'max'
     divides by the max, 'minmax' is the release's (a - min) / (max - min + 1e-8));
     label = argmax over (background, classes) (ties go to the earlier channel);
  2. pixels where more than one score exceeds `conflict_threshold` -> ignore;
  3. pixels labelled background while saliency >= `saliency_bg_threshold` or some class map
     exceeds `fg_ignore_threshold` -> ignore (salient or class-like, yet called background);
  4. fewer than `min_fg_fraction` of the pixels labelled foreground (after 2-3) -> the whole
     image is ignored (the CAMs missed the objects; better no supervision than all background).

  Args:
    cams: [n, H, W] maps of the classes `keys` (any non-negative scale).
    keys: [n] class indices (0..L-1).
    saliency: uint8 [H, W], 0..255.
    conflict_threshold, saliency_bg_threshold, fg_ignore_threshold, min_fg_fraction, cam_norm:
      the config.pseudo.* keys of the same names.
    refine: as for `threshold_label`, applied to the argmax of step 1.

  Returns:
    uint8 [H, W] labels (0, keys + 1, 255).
  """
  saliency = np.asarray(saliency, np.float32)
  cams = scale_maps(cams, cam_norm)
  if cams.shape[1:] != saliency.shape:
    raise ValueError(f'CAMs {cams.shape[1:]} and saliency {saliency.shape} differ in size')
  scores = np.concatenate([(1.0 - saliency / 255.0)[None], cams])
  label = label_values(keys)[_argmax(scores, refine)]
  label[(scores > conflict_threshold).sum(0) > 1] = IGNORE
  class_like = (cams > fg_ignore_threshold).any(0) if cams.shape[0] else np.zeros_like(label, bool)
  label[(label == 0) & ((saliency >= saliency_bg_threshold) | class_like)] = IGNORE
  foreground = np.count_nonzero((label != 0) & (label != IGNORE))
  if foreground < min_fg_fraction * label.size:
    label[:] = IGNORE
  return label
