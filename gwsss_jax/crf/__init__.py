"""Fully connected CRF post-processing (`cams.crf`, `seg.crf`), two implementations chosen by
`crf.impl` ('auto', the default, picks one: `resolve_impl`):

- 'reference': pydensecrf2 (Kraehenbuehl's C++ code), one image at a time on the host, run in the
  stages' CPU worker pools. An optional dependency: `pip install -r requirements-crf.txt`.
- 'jax': `dense.py`, the same model and inference (`lattice.py` follows the C++ permutohedral
  lattice), batched, jit-compiled and split over the local devices.
"""

from typing import NamedTuple

import numpy as np


class Params(NamedTuple):
  """The CRF's parameters, named as DeepLab's `DenseCRF` layer names them."""
  iterations: int = 10
  pos_xy_std: float = 3.0   # Gaussian kernel: spatial standard deviation (pixels)
  pos_w: float = 3.0        # Gaussian kernel: Potts weight
  bi_xy_std: float = 50.0   # bilateral kernel: spatial standard deviation (pixels)
  bi_rgb_std: float = 5.0   # bilateral kernel: colour standard deviation (0..255)
  bi_w: float = 10.0        # bilateral kernel: Potts weight


def resolve_impl(impl: str, backend: str | None = None,
                 reference_available: bool | None = None) -> tuple[str, str]:
  """(implementation, how a stage names it) for `crf.impl`: 'reference' or 'jax' as given;
  'auto' takes 'jax' where JAX runs on an accelerator (GPU, TPU: the CRF then runs beside the
  network, tens of times the reference's speed), and on a CPU the reference where pydensecrf2
  imports (its C++ is faster on a CPU than XLA's code for the lattice: docs/crf.md, "Speed"),
  else 'jax'; the name then says why. `backend` and `reference_available` default to
  `jax.default_backend()` and whether pydensecrf2 imports."""
  if impl != 'auto':
    return impl, impl
  if backend is None:
    import jax  # pylint: disable=g-import-not-at-top
    backend = jax.default_backend()
  if backend != 'cpu':
    return 'jax', f"jax; crf.impl='auto' on {backend}"
  if reference_available is None:
    from gwsss_jax.crf import reference  # pylint: disable=g-import-not-at-top
    reference_available = reference.available()
  if reference_available:
    return 'reference', "reference; crf.impl='auto' on a CPU"
  return 'jax', "jax; crf.impl='auto' on a CPU without pydensecrf2"


def params_from_config(c) -> Params:
  """Params from a config dict with the keys of `Params`."""
  return Params(**{k: c[k] for k in Params._fields})


# A padded label channel gets this energy: probability exp(-1e4) = 0, so it never wins nor
# sends messages.
PAD_ENERGY = np.float32(1e4)


def unary_from_labels(labels, num_labels: int, gt_prob: float, channels: int | None = None):
  """pydensecrf's `unary_from_labels(labels, n, gt_prob, zero_unsure=False)` (IRNet's CRF on CAM
  labels), as [H, W, channels] float32 (channels >= n; the extra ones get PAD_ENERGY):
  -log(gt_prob) for the pixel's label, -log((1 - gt_prob) / (n - 1)) for the other labels."""
  channels = num_labels if channels is None else channels
  labels = np.asarray(labels)
  on = -np.log(np.float32(gt_prob))
  off = -np.log((1.0 - np.float32(gt_prob)) / (num_labels - 1))
  u = np.full(labels.shape + (channels,), PAD_ENERGY, np.float32)
  u[..., :num_labels] = off
  np.put_along_axis(u, labels[..., None].astype(np.int64), on, axis=-1)
  return u
