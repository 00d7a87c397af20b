"""The reference dense CRF: pydensecrf2's `DenseCRF2D` on one image, on the host.

pydensecrf2 publishes no wheels: pip builds it from source with the system C++ compiler (about a
minute). It is therefore an optional dependency, imported only when `crf.impl` is 'reference' (or
'auto' on a CPU) and a CRF is asked for.
"""

import numpy as np

from gwsss_jax.common.errors import UserError
from gwsss_jax.crf import Params

INSTALL = ('pip install -r requirements-crf.txt (pydensecrf2==1.1, built from source: needs a C++ '
           'compiler)')


def _import_error():
  """The ImportError of pydensecrf2, or None where it imports."""
  try:
    import pydensecrf.densecrf  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    return e
  return None


def available() -> bool:
  """Whether pydensecrf2 imports."""
  return _import_error() is None


def require(key: str) -> None:
  """UserError naming `key` and saying how to install pydensecrf2 when it is missing."""
  e = _import_error()
  if e is not None:
    raise UserError(f"config.{key}=True with crf.impl='reference' needs pydensecrf2, which is "
                    f"not importable ({e}): {INSTALL}; or set crf.impl='jax'")


def build(unary, rgb, params: Params):
  """pydensecrf2's `DenseCRF2D` with unary energies [L, H, W] and the kernels of `params` on the
  image rgb uint8 [H, W, 3] (both copied: pydensecrf2 takes writable C-contiguous arrays only)."""
  import pydensecrf.densecrf as dcrf  # pylint: disable=g-import-not-at-top

  num_labels, h, w = unary.shape
  crf = dcrf.DenseCRF2D(w, h, num_labels)
  crf.setUnaryEnergy(np.array(unary.reshape(num_labels, -1), np.float32, order='C'))
  if params.pos_w:
    crf.addPairwiseGaussian(sxy=params.pos_xy_std, compat=params.pos_w)
  if params.bi_w:
    crf.addPairwiseBilateral(sxy=params.bi_xy_std, srgb=params.bi_rgb_std,
                             rgbim=np.array(rgb, np.uint8, order='C'), compat=params.bi_w)
  return crf


def inference(unary, rgb, params: Params) -> np.ndarray:
  """Q float32 [L, H, W] from unary energies [L, H, W] and the image rgb uint8 [H, W, 3]."""
  crf = build(unary, rgb, params)
  return np.asarray(crf.inference(params.iterations), np.float32).reshape(unary.shape)


def from_labels(labels, rgb, num_labels: int, params: Params, gt_prob: float):
  """IRNet's `crf_inference_label`: the refined label map (indices 0..n-1) of `labels`."""
  from pydensecrf.utils import unary_from_labels  # pylint: disable=g-import-not-at-top

  if num_labels < 2:
    return np.zeros(np.shape(labels), np.int64)
  u = unary_from_labels(np.asarray(labels), num_labels, gt_prob, zero_unsure=False)
  return np.argmax(inference(u.reshape((num_labels,) + np.shape(labels)), rgb, params), 0)


def from_probs(probs, rgb, params: Params):
  """DeepLab's CRF: the refined label map of softmax probabilities [L, H, W]."""
  from pydensecrf.utils import unary_from_softmax  # pylint: disable=g-import-not-at-top

  u = unary_from_softmax(np.asarray(probs, np.float32))
  return np.argmax(inference(u.reshape(np.shape(probs)), rgb, params), 0)
