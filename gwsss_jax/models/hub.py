"""Weight files by name (`torchvision:vgg16`, ...): download once into a cache, check the digest.

`model.pretrained` and `seg.pretrained` take a converted directory or one of `NAMES`.
`models.convert.resolve_pretrained` turns a name into a converted directory; this module only
fetches and checks the file. Cache (`$GWSSS_CACHE`, default `~/.cache/gwsss_jax`):
  downloads/<file>    the weight file as published
  weights/<name>      its conversion (`name` with ':' replaced by '_')

A download goes to a temporary file beside its final name and is renamed only once its size and
digest check, so an interrupted or corrupted transfer leaves nothing behind. A site without
internet access puts the file at `downloads/<file>` by hand, or points `$GWSSS_WEIGHTS_TABLE` at
a JSON file `{"<name>": {"url": ..., "sha256": ...}}` that replaces those fields (a mirror).
"""

import dataclasses
import hashlib
import http.client
import json
import os
import re
import tempfile
import urllib.request
from typing import Optional

from gwsss_jax.common.errors import UserError

CACHE_ENV = 'GWSSS_CACHE'
TABLE_ENV = 'GWSSS_WEIGHTS_TABLE'
_CHUNK = 1 << 20
_TIMEOUT_S = 60


@dataclasses.dataclass(frozen=True)
class Source:
  """A published weight file: what `models.convert` format reads it, and how to check it.

  `sha256` may be a prefix (torchvision's file names carry the first 8 hex digits of the
  SHA-256, which `torch.hub` checks the same way); `md5` is Keras' published `file_hash`.
  Neither set means no digest is published: the converter's name and shape checks still apply.
  """
  fmt: str
  file: str
  url: Optional[str]           # None: no direct link; `page` says where to get the file
  page: str = ''
  sha256: str = ''
  md5: str = ''


NAMES = {
    'torchvision:vgg16': Source(
        'torchvision_vgg16', 'vgg16-397923af.pth',
        'https://download.pytorch.org/models/vgg16-397923af.pth', sha256='397923af'),
    'torchvision:resnet101': Source(
        'torchvision_resnet101', 'resnet101-63fe2227.pth',
        'https://download.pytorch.org/models/resnet101-63fe2227.pth', sha256='63fe2227'),
    'keras:vgg16': Source(
        'keras_h5', 'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5',
        'https://storage.googleapis.com/tensorflow/keras-applications/vgg16/'
        'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5',
        md5='6d6bbae143d832006294945121d1f1fc'),
    # Published on Google Drive (a confirmation page, not a file, for plain HTTP clients).
    'deeplab:coco_init': Source(
        'deeplab_coco', 'MS_DeepLab_resnet_pretrained_COCO_init.pth', None,
        page='https://drive.google.com/file/d/0BxhUwxvLPO7TVFJQU1dwbXhHdEk/view (linked from '
        'the README of github.com/isht7/pytorch-deeplab-resnet)'),
}
_NAME = re.compile(r'^[a-z0-9_]+:[a-z0-9_]+$')


def looks_like_name(value: str) -> bool:
  """'x:y' in lower case that is not an existing path."""
  return bool(_NAME.match(value)) and not os.path.exists(value)


def check_name(value: str, config_key: str) -> None:
  """UserError when `value` has a name's form but is no known name (validation, no I/O)."""
  if looks_like_name(value) and value not in NAMES:
    raise UserError(f'config.{config_key}={value!r}: unknown weights name; choose from '
                    f'{", ".join(NAMES)}, or give a converted directory')


def cache_dir() -> str:
  return os.path.abspath(os.path.expanduser(
      os.environ.get(CACHE_ENV) or os.path.join('~', '.cache', 'gwsss_jax')))


def converted_dir(name: str) -> str:
  return os.path.join(cache_dir(), 'weights', name.replace(':', '_'))


def source(name: str, config_key: str = 'model.pretrained') -> Source:
  """The table entry of `name`, with `$GWSSS_WEIGHTS_TABLE`'s url / sha256 / md5 applied."""
  check_name(name, config_key)
  entry = NAMES[name]
  table = os.environ.get(TABLE_ENV)
  if table:
    try:
      with open(table) as f:
        override = json.load(f).get(name, {})
    except (OSError, ValueError) as e:
      raise UserError(f'${TABLE_ENV}={table}: not a readable JSON table ({e})') from e
    unknown = set(override) - {'url', 'sha256', 'md5'}
    if unknown:
      raise UserError(f'${TABLE_ENV}={table}: {name}: unknown fields {sorted(unknown)} '
                      '(url, sha256, md5)')
    entry = dataclasses.replace(entry, **override)
  return entry


def _by_hand(entry: Source, path: str) -> str:
  where = entry.url or entry.page
  return f'download {where} yourself and put it at {path}'


def _check_digest(entry: Source, sha256: str, md5: str) -> Optional[str]:
  """None when the digests match the published ones; else what differs."""
  if entry.sha256 and not sha256.startswith(entry.sha256.lower()):
    return f'SHA-256 {sha256}, expected {entry.sha256}...'
  if entry.md5 and md5 != entry.md5.lower():
    return f'MD5 {md5}, expected {entry.md5}'
  return None


def _digests(path: str) -> tuple[str, str]:
  sha, md5 = hashlib.sha256(), hashlib.md5()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(_CHUNK), b''):
      sha.update(chunk)
      md5.update(chunk)
  return sha.hexdigest(), md5.hexdigest()


def fetch(name: str, config_key: str = 'model.pretrained', log=print) -> tuple[str, Source]:
  """(path of the weight file of `name`, its table entry), downloading and checking it once.

  A file already in the cache (downloaded earlier or put there by hand) is checked again, since
  converting it is what follows. Every failure is a UserError saying where to put the file.
  """
  entry = source(name, config_key)
  path = os.path.join(cache_dir(), 'downloads', entry.file)
  if os.path.isfile(path):
    problem = _check_digest(entry, *_digests(path))
    if problem:
      raise UserError(f'config.{config_key}={name!r}: {path} is not the published file '
                      f'({problem}); delete it, or {_by_hand(entry, path)}')
    return path, entry
  if not entry.url:
    raise UserError(f'config.{config_key}={name!r}: no direct download; {_by_hand(entry, path)}')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f'.{entry.file}.', suffix='.part')
  try:
    log(f'downloading {entry.url} to {path}')
    sha, md5, received = hashlib.sha256(), hashlib.md5(), 0
    try:
      with os.fdopen(fd, 'wb') as out, urllib.request.urlopen(entry.url,
                                                              timeout=_TIMEOUT_S) as response:
        expected = response.headers.get('Content-Length')
        for chunk in iter(lambda: response.read(_CHUNK), b''):
          out.write(chunk)
          sha.update(chunk)
          md5.update(chunk)
          received += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    except (OSError, http.client.HTTPException, ValueError) as e:  # URLError is an OSError
      raise UserError(f'config.{config_key}={name!r}: download failed ({e}); '
                      f'{_by_hand(entry, path)}') from e
    if expected is not None and received != int(expected):
      raise UserError(f'config.{config_key}={name!r}: transfer interrupted ({received} of '
                      f'{expected} bytes); {_by_hand(entry, path)}')
    problem = _check_digest(entry, sha.hexdigest(), md5.hexdigest())
    if problem:
      raise UserError(f'config.{config_key}={name!r}: {entry.url} gave a corrupted file '
                      f'({problem}); {_by_hand(entry, path)}')
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path, entry
