"""Agreement of the JAX dense CRF with the reference (pydensecrf2) on MSRC-v2 photographs.

Needs the data (MSRC-v2 `Images/` and `newsegmentations_mats/`) and pydensecrf2:

  python benchmarks/crf_msrc.py --root=/path/to/msrc_v2 --num_images=24

The images are spread over the whole set (every len / num_images-th in name order).

Unaries are made from the ground truth, degraded as a stride-8 network's output would be: the
one-hot mask (void: uniform) averaged to 1/8 resolution, Gaussian-blurred, upsampled, with
Gaussian noise (std 1) on the logits (6 x the blurred one-hot), then softmax. Two settings of the pipeline's defaults:
`seg` (seg.crf_params on -log p over all 24 labels) and `cams` (cams.crf_params on the argmax
labels of the image's classes, gt_prob 0.7, as IRNet). Prints one JSON line per setting: pixel
label agreement, and the mIoU (void ignored) without CRF and after each implementation's CRF.
"""

import argparse
import glob
import json
import os

import cv2
import jax
import numpy as np
import scipy.io
import scipy.ndimage

from gwsss_jax import config as config_lib
from gwsss_jax import crf
from gwsss_jax.crf import dense
from gwsss_jax.crf import reference
from gwsss_jax.evaluation import metrics

NUM = 24  # 23 classes + the unused label 0 (void is 0 in newseg)


def degraded_probs(gt, rng):
  h, w = gt.shape
  onehot = np.eye(NUM, dtype=np.float32)[gt]
  onehot[gt == 0] = 1.0 / NUM
  small = jax.image.resize(onehot, (max(h // 8, 1), max(w // 8, 1), NUM), 'linear')
  small = scipy.ndimage.gaussian_filter(np.asarray(small), (1.0, 1.0, 0))
  logits = 6.0 * np.asarray(jax.image.resize(small, (h, w, NUM), 'linear'))
  logits += rng.normal(0, 1.0, logits.shape).astype(np.float32)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  return p / p.sum(-1, keepdims=True)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--root', default='/work/shared/data/msrc_v2')
  ap.add_argument('--num_images', type=int, default=24)
  args = ap.parse_args()
  base = config_lib.base_config()
  settings = {'seg': crf.params_from_config(base.seg.crf_params),
              'cams': crf.params_from_config(base.cams.crf_params)}
  gt_prob = base.cams.crf_params.gt_prob
  mats = sorted(glob.glob(os.path.join(args.root, 'newsegmentations_mats', '*_GT.mat')))
  mats = mats[::max(len(mats) // args.num_images, 1)][:args.num_images]
  rng = np.random.default_rng(0)
  for name, params in settings.items():
    labeller = dense.make_labeller(params)
    cms = {k: np.zeros((NUM, NUM), np.int64) for k in ('no_crf', 'reference', 'jax')}
    equal = total = 0
    for mat in mats:
      gt = scipy.io.loadmat(mat)['newseg'].astype(np.int64)
      image = os.path.join(args.root, 'Images', os.path.basename(mat).replace('_GT.mat', '.bmp'))
      rgb = cv2.cvtColor(cv2.imread(image), cv2.COLOR_BGR2RGB)
      probs = degraded_probs(gt, rng)
      plain = probs.argmax(-1)
      if name == 'seg':
        unary = np.asarray(dense.unary_from_probs(probs))
        ref = reference.from_probs(probs.transpose(2, 0, 1), rgb, params)
        back = np.arange(NUM)
      else:  # the image's classes only, as CAM keys
        back = np.unique(plain)
        index = np.searchsorted(back, plain)
        unary = crf.unary_from_labels(index, len(back), gt_prob)
        ref = back[reference.from_labels(index, rgb, len(back), params, gt_prob)]
      jx = np.asarray(labeller(unary[None], rgb[None], np.array([gt.shape], np.int32)))[0]
      jx = back[jx]
      gt_eval = np.where(gt == 0, 255, gt)
      for k, pred in (('no_crf', plain), ('reference', ref), ('jax', jx)):
        cms[k] += metrics.confusion_matrix(pred, gt_eval, NUM)
      equal += int(np.sum(ref == jx))
      total += gt.size
    miou = {k: float(np.nanmean(metrics.iou_per_class(cm)[1:])) for k, cm in cms.items()}
    print(json.dumps({'setting': name, 'images': len(mats), 'label_agreement': equal / total,
                      **{f'miou_{k}': v for k, v in miou.items()}}), flush=True)


if __name__ == '__main__':
  main()
