"""Random weights for tests that need a network's outputs to be O(1) without training."""

import numpy as np
from flax import traverse_util


def he_normal(shapes, rng: np.random.Generator):
  """Numpy variables of the shapes `shapes` (a flax variables tree, e.g. jax.eval_shape of
  init): kernels (2-D and up) He-normal, N(0, 2 / fan_in) with the fan-in the product of all
  but the last axis; BatchNorm scales and variances 1; every other vector (biases, means) 0.

  Numpy, so there is no init function to compile; and the activations stay O(1), where flax's
  initialisers shrink those of a test-width network to about 1e-7."""
  def leaf(path, s):
    if len(s.shape) >= 2:
      return (rng.normal(size=s.shape) * np.sqrt(2.0 / np.prod(s.shape[:-1]))).astype(np.float32)
    return np.full(s.shape, 1.0 if path[-1] in ('scale', 'var') else 0.0, np.float32)
  flat = traverse_util.flatten_dict(shapes)
  return traverse_util.unflatten_dict({k: leaf(k, v) for k, v in flat.items()})
