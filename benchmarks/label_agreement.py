"""Pixel agreement of two directories of label PNGs, and the mIoU of each against ground truth.

Made for the dense CRF's two implementations on a pipeline's real outputs: run the same stage
twice, once with `--config.crf.impl=reference` and once with `jax` (two copies of a workdir),
then compare what they wrote (docs/crf.md):

  python -m benchmarks.label_agreement --a=RUN_REF/pseudo_labels --b=RUN_JAX/pseudo_labels \
    --gt=RUN_REF/cache/msrc_voc/SegmentationClass --num_classes=13

Every `<name>.png` of `--a` must exist in `--b` with the same size. Pixels where the ground truth
is 255 are left out of the agreement as of the mIoU, and so are 255 pixels of both labels
(nothing decided by either side). Prints one JSON line.
"""

import argparse
import json
import os
import sys

import numpy as np

from gwsss_jax.common.errors import UserError
from gwsss_jax.data import palette
from gwsss_jax.evaluation import metrics


def compare(dir_a: str, dir_b: str, gt_dir: str = '', num_classes: int = 0) -> dict:
  names = sorted(f[:-4] for f in os.listdir(dir_a) if f.endswith('.png'))
  if not names:
    raise UserError(f'{dir_a}: no label PNG')
  if gt_dir and num_classes < 1:
    raise UserError('--num_classes is needed with --gt (background included)')
  equal = counted = 0
  cms = [np.zeros((num_classes, num_classes), np.int64) for _ in range(2)]
  for name in names:
    a = palette.read_label_png(os.path.join(dir_a, name + '.png'))
    b = palette.read_label_png(os.path.join(dir_b, name + '.png'))
    if a.shape != b.shape:
      raise UserError(f'{name}.png: {a.shape} in {dir_a}, {b.shape} in {dir_b}')
    keep = ~((a == 255) & (b == 255))
    if gt_dir:
      gt = palette.read_label_png(os.path.join(gt_dir, name + '.png'))
      if gt.shape != a.shape:
        raise UserError(f'{name}.png: ground truth {gt.shape}, labels {a.shape}')
      keep &= gt != 255
      for cm, pred in zip(cms, (a, b)):
        cm += metrics.confusion_matrix(pred, gt, num_classes)
    equal += int(((a == b) & keep).sum())
    counted += int(keep.sum())
  out = {'images': len(names), 'pixels': counted,
         'agreement': equal / counted if counted else float('nan')}
  if gt_dir:
    out['miou_a'] = float(np.nanmean(metrics.iou_per_class(cms[0])))
    out['miou_b'] = float(np.nanmean(metrics.iou_per_class(cms[1])))
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--a', required=True, help='directory of label PNGs')
  parser.add_argument('--b', required=True, help='directory of label PNGs with the same names')
  parser.add_argument('--gt', default='', help='ground-truth label PNGs (optional)')
  parser.add_argument('--num_classes', type=int, default=0, help='with --gt: background included')
  args = parser.parse_args(argv)
  try:
    print(json.dumps(compare(args.a, args.b, args.gt, args.num_classes)))
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
