"""Agreement of the JAX dense CRF with the reference (pydensecrf2), and the mIoU of each.

On MSRC-v2 photographs (`Images/`, `newsegmentations_mats/`; 23 classes, void ignored):

  python -m benchmarks.crf_agreement --msrc=/path/to/msrc_v2 --num_images=24

On a dataset in the VOC layout (`JPEGImages/`, `SegmentationClass/`, the `--split` list), such as
the built-in one (`python -m gwsss_jax.data.synthetic --out DIR`, 6 classes + background):

  python -m benchmarks.crf_agreement --voc=DIR --num_labels=7 --num_images=48

With GWSSS_BENCH_SMOKE=1 (benchmarks/smoke.py) it takes 3 images at most: a test's proof that
the command runs.

The images are spread over the whole set (every len / num_images-th in list order).

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

from benchmarks import smoke
from gwsss_jax import config as config_lib
from gwsss_jax import crf
from gwsss_jax.crf import dense
from gwsss_jax.crf import reference
from gwsss_jax.data import palette
from gwsss_jax.evaluation import metrics

MSRC_LABELS = 24  # 23 classes + label 0, which is void in newseg


def degraded_probs(gt, num, rng):
  h, w = gt.shape
  onehot = np.eye(num, dtype=np.float32)[np.where(gt == 255, 0, gt)]
  onehot[gt == 255] = 1.0 / num
  small = jax.image.resize(onehot, (max(h // 8, 1), max(w // 8, 1), num), 'linear')
  small = scipy.ndimage.gaussian_filter(np.asarray(small), (1.0, 1.0, 0))
  logits = 6.0 * np.asarray(jax.image.resize(small, (h, w, num), 'linear'))
  logits += rng.normal(0, 1.0, logits.shape).astype(np.float32)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  return p / p.sum(-1, keepdims=True)


def msrc_items(root):
  """(name, rgb, gt with void as 255) of MSRC-v2 in name order."""
  for mat in sorted(glob.glob(os.path.join(root, 'newsegmentations_mats', '*_GT.mat'))):
    gt = scipy.io.loadmat(mat)['newseg'].astype(np.int64)
    name = os.path.basename(mat).replace('_GT.mat', '')
    yield name, os.path.join(root, 'Images', name + '.bmp'), np.where(gt == 0, 255, gt)


def voc_items(root, split):
  with open(os.path.join(root, 'ImageSets', 'Segmentation', split + '.txt')) as f:
    names = f.read().split()
  for name in names:
    yield (name, os.path.join(root, 'JPEGImages', name + '.jpg'),
           palette.read_label_png(os.path.join(root, 'SegmentationClass', name + '.png')))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--msrc', default='', help='MSRC-v2 root')
  ap.add_argument('--voc', default='', help='root of a dataset in the VOC layout')
  ap.add_argument('--split', default='val')
  ap.add_argument('--num_labels', type=int, default=21, help='--voc: classes + background')
  ap.add_argument('--num_images', type=int, default=24)
  args = ap.parse_args()
  if smoke.enabled():
    args.num_images = min(args.num_images, 3)
  if bool(args.msrc) == bool(args.voc):
    ap.error('give one of --msrc, --voc')
  items = list(msrc_items(args.msrc) if args.msrc else voc_items(args.voc, args.split))
  num = MSRC_LABELS if args.msrc else args.num_labels
  items = items[::max(len(items) // args.num_images, 1)][:args.num_images]
  base = config_lib.base_config()
  settings = {'seg': crf.params_from_config(base.seg.crf_params),
              'cams': crf.params_from_config(base.cams.crf_params)}
  gt_prob = base.cams.crf_params.gt_prob
  rng = np.random.default_rng(0)
  for name, params in settings.items():
    labeller = dense.make_labeller(params)
    cms = {k: np.zeros((num, num), np.int64) for k in ('no_crf', 'reference', 'jax')}
    equal = total = 0
    for _, image, gt in items:
      rgb = cv2.cvtColor(cv2.imread(image), cv2.COLOR_BGR2RGB)
      probs = degraded_probs(gt, num, rng)
      plain = probs.argmax(-1)
      if name == 'seg':
        unary = np.asarray(dense.unary_from_probs(probs))
        ref = reference.from_probs(probs.transpose(2, 0, 1), rgb, params)
        back = np.arange(num)
      else:  # the image's classes only, as CAM keys
        back = np.unique(plain)
        index = np.searchsorted(back, plain)
        unary = crf.unary_from_labels(index, len(back), gt_prob)
        ref = back[reference.from_labels(index, rgb, len(back), params, gt_prob)]
      jx = np.asarray(labeller(unary[None], rgb[None], np.array([gt.shape], np.int32)))[0]
      jx = back[jx]
      for k, pred in (('no_crf', plain), ('reference', ref), ('jax', jx)):
        cms[k] += metrics.confusion_matrix(pred, gt, num)
      equal += int(np.sum(ref == jx))
      total += gt.size
    # MSRC's label 0 is void, not a class.
    miou = {k: float(np.nanmean(metrics.iou_per_class(cm)[1 if args.msrc else 0:]))
            for k, cm in cms.items()}
    print(json.dumps({'setting': name, 'images': len(items), 'label_agreement': equal / total,
                      **{f'miou_{k}': v for k, v in miou.items()}}), flush=True)


if __name__ == '__main__':
  main()
