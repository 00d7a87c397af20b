"""Weights by name (`model.pretrained=torchvision:vgg16`) against a local HTTP server on
127.0.0.1 serving a generated narrow torchvision-layout VGG16: download, digest check,
conversion and reuse; an interrupted and a corrupted transfer leave no file behind and say where
to put the file by hand; the driver trains from the name end to end. No public URL is contacted.
"""

import hashlib
import http.server
import io
import json
import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest

from demo_config import demo_config
from gwsss_jax import config as config_lib
from gwsss_jax.common.errors import UserError
from gwsss_jax.models import convert
from gwsss_jax.models import hub
from gwsss_jax.train import artifact

torch = pytest.importorskip('torch')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = 'torchvision:vgg16'
WIDTH = 0.0625  # conv1_1 has 4 filters: a 100 KB file


def _state_dict() -> dict:
  """torchvision VGG16 `features.*` keys (OIHW) at WIDTH, without the fully connected layers."""
  rng = np.random.default_rng(0)
  out, cin = {}, 3
  for index, channels in zip(convert.VGG16_TORCHVISION_INDICES,
                             [64] * 2 + [128] * 2 + [256] * 3 + [512] * 6):
    cout = int(channels * WIDTH)
    out[f'features.{index}.weight'] = torch.from_numpy(
        rng.normal(0, 0.1, (cout, cin, 3, 3)).astype(np.float32))
    out[f'features.{index}.bias'] = torch.from_numpy(rng.normal(0, 0.1, cout).astype(np.float32))
    cin = cout
  return out


class _Server:
  """Serves /good (the file), /cut (half of it under the full Content-Length, then closes),
  /bad (one byte flipped) and 404 otherwise; counts requests per path."""

  def __init__(self, data: bytes):
    self.data, self.requests = data, []
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF
    bodies = {'/good': (data, len(data)), '/cut': (data[:len(data) // 2], len(data)),
              '/bad': (bytes(bad), len(data))}
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def do_GET(self):  # pylint: disable=invalid-name
        server.requests.append(self.path)
        if self.path not in bodies:
          self.send_error(404)
          return
        body, length = bodies[self.path]
        self.send_response(200)
        self.send_header('Content-Length', str(length))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

  def table(self, path: str, directory, sha256: str) -> str:
    """A $GWSSS_WEIGHTS_TABLE file pointing NAME at `path` on this server."""
    table = os.path.join(directory, 'table.json')
    with open(table, 'w') as f:
      json.dump({NAME: {'url': self.url + path, 'sha256': sha256}}, f)
    return table


@pytest.fixture(scope='module')
def weights():
  state_dict = _state_dict()
  buffer = io.BytesIO()
  torch.save(state_dict, buffer)
  data = buffer.getvalue()
  return state_dict, data, hashlib.sha256(data).hexdigest()


@pytest.fixture()
def server(weights):
  s = _Server(weights[1])
  s.thread.start()
  yield s
  s.httpd.shutdown()
  s.httpd.server_close()


@pytest.fixture()
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / 'cache'))
  return tmp_path / 'cache'


def _files(directory) -> list:
  return sorted(os.path.relpath(os.path.join(r, f), directory)
                for r, _, files in os.walk(directory) for f in files)


def test_download_check_convert_and_reuse(weights, server, cache, tmp_path, monkeypatch):
  state_dict, _, sha256 = weights
  monkeypatch.setenv(hub.TABLE_ENV, server.table('/good', tmp_path, sha256))
  directory = convert.resolve_pretrained(NAME)
  assert directory == str(cache / 'weights' / 'torchvision_vgg16')
  variables, meta = convert.load_pretrained(NAME, arch='vgg16')
  assert meta['normalization']['name'] == 'imagenet_rgb'
  for index, conv in ((0, 'conv1_1'), (28, 'conv5_3')):
    np.testing.assert_array_equal(variables['params'][conv]['kernel'],
                                  state_dict[f'features.{index}.weight'].numpy().transpose(2, 3, 1, 0))
  assert server.requests == ['/good']
  # Reused: no second request, and `normalization_for` (config 'auto') reads the same record.
  assert convert.normalization_for('auto', NAME)['name'] == 'imagenet_rgb'
  assert convert.resolve_pretrained(NAME) == directory and server.requests == ['/good']
  assert [f for f in _files(cache) if f.startswith('downloads')] == [
      os.path.join('downloads', 'vgg16-397923af.pth')]
  assert not [f for f in os.listdir(cache / 'weights') if f.startswith('.')]


def test_torchvision_hash_prefix_is_checked(weights, server, cache, tmp_path, monkeypatch):
  _, _, sha256 = weights
  monkeypatch.setenv(hub.TABLE_ENV, server.table('/good', tmp_path, sha256[:8]))
  path, _ = hub.fetch(NAME)
  assert os.path.getsize(path) == len(weights[1])
  monkeypatch.setenv(hub.TABLE_ENV, server.table('/good', tmp_path, 'deadbeef'))
  os.remove(path)
  with pytest.raises(UserError, match='expected deadbeef'):
    hub.fetch(NAME)
  assert _files(cache) == []


@pytest.mark.parametrize('path, problem', [
    ('/cut', r'transfer interrupted \(\d+ of \d+ bytes\)'),
    ('/bad', 'gave a corrupted file .SHA-256 [0-9a-f]{64}, expected'),
    ('/missing', 'download failed .HTTP Error 404'),
])
def test_a_failed_download_leaves_nothing_and_says_where_to_put_the_file(
    weights, server, cache, tmp_path, monkeypatch, path, problem):
  monkeypatch.setenv(hub.TABLE_ENV, server.table(path, tmp_path, weights[2]))
  target = cache / 'downloads' / 'vgg16-397923af.pth'
  with pytest.raises(UserError) as e:
    convert.load_pretrained(NAME)
  message = str(e.value)
  assert message.startswith(f"config.model.pretrained='{NAME}': ")
  assert re.search(problem, message), message
  assert message.endswith(f'download {server.url}{path} yourself and put it at {target}')
  assert _files(cache) == []  # no partial download, no conversion


def test_a_file_put_by_hand_is_checked_and_used(weights, server, cache, tmp_path, monkeypatch):
  _, data, sha256 = weights
  monkeypatch.setenv(hub.TABLE_ENV, server.table('/good', tmp_path, sha256))
  target = cache / 'downloads' / 'vgg16-397923af.pth'
  target.parent.mkdir(parents=True)
  target.write_bytes(data[:-1] + b'x')
  with pytest.raises(UserError, match=f'{target} is not the published file .*delete it'):
    convert.resolve_pretrained(NAME, config_key='seg.pretrained')
  target.write_bytes(data)
  assert os.path.isdir(convert.resolve_pretrained(NAME))
  assert server.requests == []


def test_names_without_a_direct_link_or_unknown(cache):
  with pytest.raises(UserError, match=r"config.seg.pretrained='deeplab:coco_init': no direct "
                     r'download; download https://drive.google.com/.* yourself and put it at '
                     + re.escape(str(cache / 'downloads' / 'MS_DeepLab_resnet_pretrained_COCO_init.pth'))):
    convert.resolve_pretrained('deeplab:coco_init', config_key='seg.pretrained')
  config = config_lib.base_config()
  config.seg.pretrained = 'torchvision:vgg19'
  with pytest.raises(UserError, match="config.seg.pretrained='torchvision:vgg19': unknown "
                     'weights name; choose from torchvision:vgg16'):
    config_lib.validate(config)
  assert _files(cache) == [] if os.path.isdir(cache) else True


def test_published_table():
  """The table's entries as docs/weights.md lists them (file names carry torchvision's prefix)."""
  for name, entry in hub.NAMES.items():
    assert entry.fmt in convert.FORMATS, name
    if entry.fmt.startswith('torchvision'):
      assert entry.file.split('-')[1].split('.')[0] == entry.sha256 and entry.url.endswith(
          entry.file)
  with open(os.path.join(ROOT, 'docs', 'weights.md')) as f:
    doc = f.read()
  for name, entry in hub.NAMES.items():
    assert f'`{name}`' in doc and entry.file in doc, name


OVERRIDES = {
    'data.synthetic.num_train': 8, 'data.synthetic.num_val': 4, 'data.synthetic.size': 48,
    'data.crop_size': 32, 'data.resize': 40, 'model.width': WIDTH, 'model.node_dim': 16,
    'train.batch_size': 4, 'train.max_steps': 2, 'train.log_every_steps': 1,
    'stages': 'train_cls', 'model.pretrained': NAME,
}


def _driver(tmp_path, cache, table):
  env = dict(os.environ, GWSSS_CACHE=str(cache), GWSSS_WEIGHTS_TABLE=table,
             PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get('PYTHONPATH')) if p))
  return subprocess.run(
      [sys.executable, '-m', 'gwsss_jax.main', f'--config={ROOT}/configs/demo.py',
       f'--workdir={tmp_path / "wd"}'] + [f'--config.{k}={v}' for k, v in OVERRIDES.items()],
      cwd=ROOT, env=env, capture_output=True, text=True, check=False)


def test_driver_stops_at_its_start_on_a_failed_download(weights, server, cache, tmp_path):
  proc = _driver(tmp_path, cache, server.table('/cut', tmp_path, weights[2]))
  assert proc.returncode == 2, proc.stderr[-3000:]
  error = [l for l in proc.stderr.splitlines() if l.startswith('error: ')]
  assert len(error) == 1 and 'transfer interrupted' in error[0] and 'put it at' in error[0]
  assert '[train_cls] starting' not in proc.stdout and 'Traceback' not in proc.stderr
  assert _files(cache) == []


@pytest.mark.slow
def test_driver_trains_from_a_name(weights, server, cache, tmp_path):
  overrides = OVERRIDES
  proc = _driver(tmp_path, cache, server.table('/good', tmp_path, weights[2]))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert server.requests == ['/good']
  assert os.path.isfile(cache / 'weights' / 'torchvision_vgg16' / convert.META_FILE)
  # The trained trunk is the served file after two small steps, not a random initialisation.
  config = demo_config(overrides, str(tmp_path / 'wd' / 'data' / 'synthetic'))
  _, variables, _ = artifact.load(artifact.classifier_dir(str(tmp_path / 'wd')), config=config)
  served = weights[0]['features.0.weight'].numpy().transpose(2, 3, 1, 0)
  trained = np.asarray(variables['params']['backbone']['conv1_1']['kernel'])
  assert np.abs(trained - served).max() < 0.01 < np.abs(served).max()
