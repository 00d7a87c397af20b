"""The console of a tiny driver run: one line per log interval and nothing else repeating it (no
clu LoggingWriter line), no progress bar when stderr is not a terminal, no library INFO logs;
TensorBoard still receives every metric. The library filter and the bar switch in-process."""

import logging
import os
import re
import subprocess
import sys

import pytest

from gwsss_jax.common import console

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {
    'data.synthetic.num_train': 8, 'data.synthetic.num_val': 4, 'data.synthetic.size': 48,
    'data.crop_size': 32, 'data.resize': 40, 'model.width': 0.0625, 'model.node_dim': 16,
    'train.batch_size': 4, 'train.num_epochs': 3, 'train.log_every_steps': 2,
    'stages': 'train_cls',
}


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('console') / 'wd'
  env = dict(os.environ,
             PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get('PYTHONPATH')) if p))
  env.pop('CI', None)  # bars stay off because stderr is a pipe, not because of CI
  proc = subprocess.run(
      [sys.executable, '-m', 'gwsss_jax.main', f'--config={ROOT}/configs/demo.py',
       f'--workdir={workdir}'] + [f'--config.{k}={v}' for k, v in OVERRIDES.items()],
      cwd=ROOT, env=env, capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc.stdout, proc.stderr


@pytest.mark.slow
def test_one_line_per_interval(run):
  workdir, stdout, stderr = run
  steps = re.findall(r'^\[train_cls\] step (\d+)/6 .*loss=([0-9.]+) ', stdout, re.M)
  assert [int(s) for s, _ in steps] == [2, 4, 6], stdout
  # Nothing else carries an interval's numbers: each loss value appears once in all the output.
  for _, loss in steps:
    assert (stdout + stderr).count(f'loss={loss} ') == 1, stdout + stderr
  everything = stdout + stderr
  for noise in ('logging_writer.py', 'train_cls/loss', 'Setting work unit notes',
                'xla_bridge.py', '%|'):
    assert noise not in everything, noise
  # absl INFO lines come from gwsss_jax's own modules only (TensorFlow's C++ lines are not absl's).
  sources = re.findall(r'^I\d{4} \S+ +\d+ (\S+\.py):\d+\]', stderr, re.M)
  assert set(sources) <= {'train_cls.py', 'checkpoint.py'}, stderr
  # TensorBoard has every printed metric, with the printed value.
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(str(workdir / 'tensorboard' / 'train_cls'),
                                           size_guidance={'tensors': 0})
  acc.Reload()
  tags = set(acc.Tags()['tensors'])
  assert {'train_cls/steps_per_sec', 'train_cls/mAP'} <= tags
  assert all(t.startswith('train_cls/') for t in tags), tags  # <stage>/<metric>, nothing bare
  lines = re.findall(r'^\[train_cls\] step 4/6 (.*)$', stdout, re.M)
  assert len(lines) == 1
  for line in lines:
    for name, value in (kv.split('=') for kv in line.split()):
      events = [e for e in acc.Tensors(f'train_cls/{name}') if e.step == 4]
      assert len(events) == 1, name
      logged = float(tensor_util.make_ndarray(events[0].tensor_proto))
      assert float(value) == pytest.approx(logged, rel=1e-3, abs=1e-4), name


def test_library_info_is_dropped_unless_verbose(monkeypatch):
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.use_absl_handler()
  handler = absl_logging.get_absl_handler()
  own = os.path.join(ROOT, 'gwsss_jax', 'pipeline.py')
  lib = os.path.join(os.path.dirname(logging.__file__), 'x.py')
  record = lambda path, level: logging.LogRecord('x', level, path, 1, 'm', (), None)
  try:
    console.configure(verbose=False)
    assert not handler.filter(record(lib, logging.INFO))
    assert handler.filter(record(lib, logging.WARNING))
    assert handler.filter(record(own, logging.INFO))
    console.configure(verbose=True)
    assert handler.filter(record(lib, logging.INFO)) and console.verbose()
  finally:
    console.configure(verbose=True)
    monkeypatch.setattr(console, '_verbose', False)


def test_bars_only_on_a_terminal_outside_ci(monkeypatch):
  class Tty:
    def __init__(self, tty):
      self.tty = tty

    def isatty(self):
      return self.tty

  monkeypatch.delenv('CI', raising=False)
  monkeypatch.setattr(sys, 'stderr', Tty(False))
  assert not console.bars_enabled()
  monkeypatch.setattr(sys, 'stderr', Tty(True))
  assert console.bars_enabled()
  monkeypatch.setenv('CI', 'true')
  assert not console.bars_enabled()
