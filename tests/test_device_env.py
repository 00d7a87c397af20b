"""benchmarks/device_env.sh, which the GPU scripts source: a module that the interpreter lacks is
installed offline from its carried wheel; without the wheel the script stops with the module and
the way out named. The GPU machine is imitated by an interpreter that fails to import tqdm."""

import os
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python_without_tqdm(tmp_path):
  """An interpreter whose `-c 'import tqdm'` probe fails, as on an image without tqdm."""
  path = tmp_path / 'python'
  path.write_text('#!/usr/bin/env bash\n'
                  'if [ "$1" = "-c" ] && [ "$2" = "import tqdm" ]; then exit 1; fi\n'
                  f'exec {sys.executable} "$@"\n')
  path.chmod(0o755)
  return str(path)


def _fake_wheel(folder):
  """A minimal pure-Python wheel of a module named tqdm (a marker, not the real package)."""
  os.makedirs(folder, exist_ok=True)
  info = 'tqdm-0.0.1.dist-info'
  with zipfile.ZipFile(os.path.join(folder, 'tqdm-0.0.1-py3-none-any.whl'), 'w') as z:
    z.writestr('tqdm/__init__.py', 'CARRIED = True\n')
    z.writestr(f'{info}/METADATA', 'Metadata-Version: 2.1\nName: tqdm\nVersion: 0.0.1\n')
    z.writestr(f'{info}/WHEEL', 'Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n'
               'Tag: py3-none-any\n')
    z.writestr(f'{info}/RECORD', f'tqdm/__init__.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n'
               f'{info}/RECORD,,\n')


def _source(tmp_path, wheels, then):
  env = dict(os.environ, PYTHON=_python_without_tqdm(tmp_path), GWSSS_WHEELS=str(wheels),
             TMPDIR=str(tmp_path))
  env.pop('PYTHONPATH', None)
  script = f'. benchmarks/device_env.sh || exit $?; {then}'
  return subprocess.run(['bash', '-c', script], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)


def test_missing_module_without_its_wheel_stops_with_the_way_out(tmp_path):
  os.makedirs(tmp_path / 'empty')
  proc = _source(tmp_path, tmp_path / 'empty', 'echo reached')
  assert proc.returncode == 2, proc.stderr
  assert 'reached' not in proc.stdout
  assert 'tqdm is missing' in proc.stderr and 'make device-wheels' in proc.stderr, proc.stderr


def test_missing_module_is_installed_from_its_carried_wheel(tmp_path):
  _fake_wheel(tmp_path / 'wheels')
  proc = _source(tmp_path, tmp_path / 'wheels',
                 '"$PY" -c "import tqdm; print(tqdm.CARRIED, tqdm.__file__)"')
  assert proc.returncode == 0, proc.stderr
  carried, path = proc.stdout.split()
  assert carried == 'True'
  assert path.startswith(str(tmp_path / 'gwsss_device_site')), path
