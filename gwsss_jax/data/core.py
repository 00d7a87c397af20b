"""What every dataset reader shares: the `Example` and `Dataset` they return, the bad-item
counter, and the checks of list and image files (headers only: no pixel is decoded).

A reader (`voc`, `coco`, `tfds_source`, ... registered in `datasets.READERS`) imports this module
and no other reader; the tf.data pipelines, the sampler and the evaluators only see a `Dataset`.
"""

import concurrent.futures
import dataclasses
import os
from typing import Optional

from absl import logging
import numpy as np
from PIL import Image

from gwsss_jax.common.errors import UserError


@dataclasses.dataclass(frozen=True)
class Example:
  name: str                 # image id, e.g. 2007_000032
  image_path: str
  mask_path: Optional[str]  # full-resolution ground truth (palette PNG), None if absent
  labels: tuple             # class indices 0..L-1 (background excluded), sorted


@dataclasses.dataclass
class Dataset:
  examples: list
  class_names: tuple        # without background
  split: str = ''
  num_skipped: int = 0      # bad items skipped by the reader (data.skip_bad=True)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def __len__(self) -> int:
    return len(self.examples)

  def label_matrix(self) -> np.ndarray:
    """[N, L] bool image-level labels."""
    out = np.zeros((len(self.examples), self.num_classes), bool)
    for i, ex in enumerate(self.examples):
      out[i, list(ex.labels)] = True
    return out


class BadItems:
  """Collects bad items: raises at the first one, or (skip_bad) warns and counts."""

  def __init__(self, skip_bad: bool):
    self.skip_bad = skip_bad
    self.count = 0

  def __call__(self, message: str) -> None:
    if not self.skip_bad:
      raise UserError(message + ' (set --config.data.skip_bad=True to skip such items)')
    self.count += 1
    logging.warning('skipping: %s', message)


def read_lines(path: str) -> list:
  """Non-empty stripped lines with their 1-based line numbers; UserError if none."""
  if not os.path.isfile(path):
    raise UserError(f'list file not found: {path}')
  with open(path) as f:
    lines = [(n, line.strip()) for n, line in enumerate(f, 1) if line.strip()]
  if not lines:
    raise UserError(f'{path}: empty list file')
  return lines


def read_label_list(path: str, num_classes: int, bad: BadItems) -> dict:
  """`name c1 c2 ...` lines -> {name: sorted class tuple}, classes in 0..num_classes-1."""
  out = {}
  for n, line in read_lines(path):
    name, *fields = line.split()
    try:
      classes = sorted({int(c) for c in fields})
    except ValueError:
      bad(f'{path}:{n}: class indices must be integers, got {line!r}')
      continue
    if any(c < 0 or c >= num_classes for c in classes):
      bad(f'{path}:{n}: class index out of range 0..{num_classes - 1} in {line!r} '
          f'(data.num_classes={num_classes})')
      continue
    out[os.path.splitext(os.path.basename(name))[0]] = tuple(classes)
  return out


def read_rgb(path: str) -> np.ndarray:
  """uint8 RGB [H, W, 3] of a JPEG, PNG or BMP, decoded by PIL (JPEGs with libjpeg's accurate
  integer DCT; no EXIF rotation, as TensorFlow's decoders); a UserError naming an unreadable
  file."""
  try:
    with Image.open(path) as img:
      return np.asarray(img.convert('RGB'))
  except (OSError, SyntaxError, ValueError) as e:
    raise UserError(f'unreadable image {path}: {e}') from None


def header_size(path: str):
  """(width, height) from the file header, without decoding the pixels; None if unreadable."""
  header = read_header(path)
  return None if header is None else header[0]


def read_header(path: str):
  """((width, height), PIL mode) from the file header; None if unreadable."""
  try:
    with Image.open(path) as img:
      return img.size, img.mode
  except (OSError, SyntaxError, ValueError):
    return None


def check_files(examples: list, bad: BadItems, num_workers: int = 8) -> list:
  """Drops (or reports) examples whose image is unreadable or whose mask size differs."""

  def check(ex):
    size = header_size(ex.image_path)
    if size is None:
      return f'unreadable image {ex.image_path}'
    if ex.mask_path is not None:
      header = read_header(ex.mask_path)
      if header is None:
        return f'unreadable mask {ex.mask_path}'
      msize, mode = header
      if mode not in ('P', 'L'):
        return (f'mask {ex.mask_path} is of mode {mode}: class masks must be 8-bit palette '
                '(P) or greyscale (L) PNGs')
      if msize != size:
        return (f'mask {ex.mask_path} is {msize[0]}x{msize[1]} but its image '
                f'{ex.image_path} is {size[0]}x{size[1]}')
    return None

  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    problems = list(pool.map(check, examples))
  kept = []
  for ex, problem in zip(examples, problems):
    if problem:
      bad(problem)
    else:
      kept.append(ex)
  return kept
