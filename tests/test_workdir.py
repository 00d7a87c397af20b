"""The workdir guards of the driver (issue 18): one run per workdir (two real processes), config
changes against the keys each stage's outputs depend on, --discard_from, per-stage metrics
through the pipeline, and stale temporary files removed when a stage starts again."""

import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from gwsss_jax import config as config_lib
from gwsss_jax import pipeline
from gwsss_jax import workdir as workdir_lib
from gwsss_jax.common import io as gio
from gwsss_jax.common.errors import UserError
from demo_config import demo_config  # pylint: disable=g-bad-import-order

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A small built-in dataset: the CLI runs below generate it in a second or two.
TINY_DATA = {'data.synthetic.num_train': 4, 'data.synthetic.num_val': 2,
             'data.synthetic.size': 48}


def _main(workdir, *args):
  proc = subprocess.run([sys.executable, '-m', 'gwsss_jax.main', '--config=configs/demo.py',
                         f'--workdir={workdir}', *args], cwd=REPO, capture_output=True,
                        text=True, check=False)
  return proc.returncode, proc.stderr


def _tiny_flags():
  return [f'--config.{k}={v}' for k, v in TINY_DATA.items()]


def _one_line_error(returncode, stderr):
  assert returncode == 2, stderr
  assert stderr.startswith('error: ') and stderr.count('\n') == 1, stderr
  return stderr


# ------------------------------------------------------------------------------------------
# 1. One run per workdir.


def test_a_second_run_on_a_workdir_in_use_fails_at_once(tmp_path):
  workdir = str(tmp_path / 'wd')
  os.makedirs(workdir)
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys\nfrom gwsss_jax import workdir\n'
       'with workdir.lock(sys.argv[1]):\n  print("locked", flush=True)\n  sys.stdin.read()\n',
       workdir], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline() == 'locked\n'
    stderr = _one_line_error(*_main(workdir, *_tiny_flags()))
    assert f'workdir {workdir} is in use by pid {holder.pid} on ' in stderr
    assert sorted(os.listdir(workdir)) == ['.lock']  # the second run touched nothing
  finally:
    holder.kill()  # death releases the lock: no stale lock to remove by hand
    holder.wait()
  with workdir_lib.lock(workdir):
    with pytest.raises(UserError, match='in use by pid'):  # one holder at a time, in-process too
      with workdir_lib.lock(workdir):
        pass
  with pytest.raises(RuntimeError):
    with workdir_lib.lock(workdir):
      raise RuntimeError('a failed run')
  with workdir_lib.lock(workdir):  # released by the failure
    pass


# ------------------------------------------------------------------------------------------
# 2. A changed config on an existing workdir.


def _tiny_config(workdir, **overrides):
  config = demo_config({**TINY_DATA, **overrides}, '')
  return config


# The stages with outputs; check_data (which only reads) runs for real on the tiny dataset.
TRAINING_STAGES = tuple(s for s in config_lib.STAGES if s != 'check_data')


@pytest.fixture
def fake_stages(monkeypatch):
  """Stages that record their calls and write one output file each."""
  calls = []

  def fake(name):
    def run(config, workdir):
      calls.append(name)
      record = workdir_lib.record_name(name, config)
      out = workdir_lib.outputs(workdir, record)[0]
      os.makedirs(out, exist_ok=True)
      with open(os.path.join(out, 'made_by_this_run'), 'w') as f:
        f.write(str(config.model.num_nodes))
      return {f'{record}/num_nodes': config.model.num_nodes}
    return run
  for name in TRAINING_STAGES:
    monkeypatch.setattr(importlib.import_module(f'gwsss_jax.stages.{name}'), 'run', fake(name))
  return calls


def test_a_changed_key_stops_the_run_and_names_it(tmp_path, fake_stages):
  workdir = str(tmp_path / 'wd')
  pipeline.run(_tiny_config(workdir), workdir)
  assert fake_stages == list(TRAINING_STAGES)
  with open(workdir_lib.record_path(workdir, 'train_cls')) as f:
    assert json.load(f)['config']['model.num_nodes'] == 3
  with open(os.path.join(workdir, 'config.json')) as f:
    before = f.read()

  changed = _tiny_config(workdir, **{'model.num_nodes': 2, 'train.base_lr': 0.01})
  with pytest.raises(UserError) as e:
    pipeline.run(changed, workdir)
  message = str(e.value)
  assert 'outputs of train_cls made with another config: model.num_nodes=2 (was 3), ' \
         'train.base_lr=0.01 (was 0.0005)' in message
  assert '--discard_from=train_cls' in message and 'another\n' not in message
  assert 'export_cams, pseudo_labels, eval_cams, train_seg, eval_seg' in message
  assert len(fake_stages) == 6  # nothing ran
  with open(os.path.join(workdir, 'config.json')) as f:
    assert f.read() == before  # still the config of the results
  # Only the stages a run reads from count: a later stage's key changed, an earlier stage run.
  later = _tiny_config(workdir, **{'cams.bg_threshold': 0.3, 'data.saliency_dir': '',
                                   'stages': 'train_cls'})
  pipeline.run(later, workdir)
  later.stages = 'pseudo_labels'
  with pytest.raises(UserError, match=r'data.saliency_dir="" \(was "SalMaps"\)'):
    pipeline.run(later, workdir)
  # Keys that change how a run goes, not what it computes, may change.
  harmless = _tiny_config(workdir, **{'train.log_every_steps': 7, 'pseudo.num_workers': 1,
                                      'seg.eval_batch_size': 2, 'parallel.impl': 'pmap',
                                      'stages': 'train_cls,export_cams'})
  pipeline.run(harmless, workdir)


def test_a_workdir_from_before_stage_records_is_checked_against_its_config_json(
    tmp_path, fake_stages):
  workdir = str(tmp_path / 'wd')
  pipeline.run(_tiny_config(workdir), workdir)
  shutil.rmtree(os.path.join(workdir, workdir_lib.RECORD_DIR))  # as older code left it
  with pytest.raises(UserError, match=r'model.num_nodes=2 \(was 3\)'):
    pipeline.run(_tiny_config(workdir, **{'model.num_nodes': 2}), workdir)
  pipeline.run(_tiny_config(workdir, **{'train.log_every_steps': 3}), workdir)


def test_a_record_from_before_the_key_renames_is_compared_under_the_new_names(
    tmp_path, fake_stages):
  workdir = str(tmp_path / 'wd')
  pipeline.run(_tiny_config(workdir, stages='train_cls'), workdir)
  path = workdir_lib.record_path(workdir, 'train_cls')
  with open(path) as f:
    record = json.load(f)
  new_to_old = {new: old for old, (new, _) in config_lib.RENAMED.items()}
  record['config'] = {new_to_old.get(k, k): v for k, v in record['config'].items()}
  assert {'model.num_steps', 'model.drop_rate', 'train.new_mult'} <= set(record['config'])
  with open(path, 'w') as f:
    json.dump(record, f)
  with pytest.raises(UserError, match=r'model.graph_steps=2 \(was 3\), '
                                      r'model.importance_prob=0.5 \(was 0.8\)'):
    pipeline.run(_tiny_config(workdir, **{'model.graph_steps': 2, 'model.importance_prob': 0.5,
                                          'stages': 'train_cls'}), workdir)
  pipeline.run(_tiny_config(workdir, stages='train_cls'), workdir)  # the same config


def test_discard_from_deletes_a_stage_and_the_stages_after_it(tmp_path, fake_stages):
  workdir = str(tmp_path / 'wd')
  pipeline.run(_tiny_config(workdir), workdir)
  oracle = _tiny_config(workdir, **{'seg.oracle': True, 'stages': 'train_seg,eval_seg'})
  pipeline.run(oracle, workdir)
  oracle_checkpoints = os.path.join(workdir, 'seg_oracle_checkpoints', 'made_by_this_run')
  assert os.path.exists(oracle_checkpoints)

  changed = _tiny_config(workdir, **{'cams.flip': True, 'cams.method': 'group_inference',
                                     'stages': 'export_cams'})
  with pytest.raises(UserError, match='--discard_from=export_cams'):
    pipeline.run(changed, workdir)
  metrics = pipeline.run(changed, workdir, discard_from='export_cams')
  assert metrics['export_cams/num_nodes'] == 3 and 'pseudo_labels/num_nodes' not in metrics
  for gone in ('pseudo_labels', 'vis', 'seg_checkpoints', 'seg_predictions'):
    assert not os.path.exists(os.path.join(workdir, gone)), gone
  for record in ('pseudo_labels', 'eval_cams', 'train_seg', 'eval_seg'):
    assert not os.path.exists(workdir_lib.record_path(workdir, record))
    assert not os.path.exists(gio.stage_metrics_path(workdir, record))
  for kept in ('cls_checkpoints', 'cams'):  # cams/ holds the new export
    assert os.path.exists(os.path.join(workdir, kept, 'made_by_this_run'))
  assert os.path.exists(oracle_checkpoints)  # the oracle run reads nothing of the CAM stages
  # The oracle run does not depend on the classifier's keys either.
  oracle.model.num_nodes = 2
  pipeline.run(oracle, workdir)


@pytest.mark.slow  # two command-line runs that import JAX and generate data
def test_cli_refuses_a_changed_config_and_discards_on_request(tmp_path):
  workdir = str(tmp_path / 'wd')
  config = _tiny_config(workdir)
  os.makedirs(os.path.join(workdir, 'cls_checkpoints', '100'))
  workdir_lib.write_record(workdir, 'train_cls', config)  # a finished K=3 classifier
  stderr = _one_line_error(*_main(workdir, *_tiny_flags(), '--config.model.num_nodes=2'))
  assert 'model.num_nodes=2 (was 3)' in stderr and '--discard_from=train_cls' in stderr
  assert os.path.isdir(os.path.join(workdir, 'cls_checkpoints', '100'))
  assert not os.path.exists(os.path.join(workdir, 'config.json'))
  # Discarded, the run goes on with the new config; export_cams then finds no OAA store.
  returncode, stderr = _main(workdir, *_tiny_flags(), '--config.model.num_nodes=2',
                             '--config.stages=export_cams', '--discard_from=train_cls')
  assert returncode == 2 and 'Traceback' not in stderr, stderr  # (TensorFlow logs before it)
  assert stderr.splitlines()[-1].endswith('run the train_cls stage first or set '
                                          'cams.method=group_inference')
  assert not os.path.exists(os.path.join(workdir, 'cls_checkpoints'))
  assert not os.path.exists(workdir_lib.record_path(workdir, 'train_cls'))
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['model']['num_nodes'] == 2


def test_depends_on_leaves_out_locations_and_run_settings():
  config = config_lib.base_config()
  keys = set(workdir_lib.depends_on('train_cls', config))
  assert {'model.num_nodes', 'train.base_lr', 'data.crop_size', 'seed',
          'cams.prob_threshold', 'cams.oaa_members', 'cams.oaa_first_epoch',
          'cams.oaa_fill_last_epoch', 'cams.source', 'data.resize_mode',
          'train.anchor_order'} <= keys
  config.cams.oaa_all_readouts = True  # the store then holds every readout
  assert 'cams.source' not in workdir_lib.depends_on('train_cls', config)
  assert not keys & {'data.root', 'train.log_every_steps', 'parallel.impl', 'stages',
                     'data.saliency_dir', 'cams.bg_threshold'}
  seg = set(workdir_lib.depends_on('train_seg', config))
  assert {'seg.num_steps', 'seg.base_lr', 'data.train_split'} <= seg
  assert not seg & {'seg.eval_scales', 'model.num_nodes', 'data.crop_size'}
  config.data.saliency_dir = ''
  assert {'cams.bg_threshold', 'pseudo.cam_norm'} <= set(
      workdir_lib.depends_on('pseudo_labels', config))


def test_an_unreadable_stage_record_is_named(tmp_path):
  workdir = str(tmp_path)
  path = workdir_lib.record_path(workdir, 'train_cls')
  os.makedirs(os.path.dirname(path))
  with open(path, 'w') as f:
    f.write('{"config": {"model.num_nodes": 3')
  with pytest.raises(UserError) as e:
    workdir_lib.check(workdir, config_lib.base_config(), ['eval_cams'])  # reads train_cls's
  assert str(e.value).startswith(f'unreadable stage record {path}: ')
  assert '--discard_from=train_cls' in str(e.value) and '\n' not in str(e.value)


# ------------------------------------------------------------------------------------------
# 6. Per-stage metrics through the pipeline.


def test_a_corrupt_metrics_json_is_rebuilt_and_a_corrupt_stage_file_named(tmp_path,
                                                                          fake_stages):
  workdir = str(tmp_path / 'wd')
  config = _tiny_config(workdir, stages='train_cls,export_cams')
  first = pipeline.run(config, workdir)
  summary = os.path.join(workdir, gio.METRICS_FILE)
  with open(summary, 'w') as f:
    f.write('{"train_cls/num_nodes": 3, "tr')
  config.stages = 'export_cams'
  assert pipeline.run(config, workdir) == first  # train_cls's figures come back
  with open(summary) as f:
    assert json.load(f) == first
  bad = gio.stage_metrics_path(workdir, 'train_cls')
  with open(bad, 'w') as f:
    f.write('{"train_cls/num')
  calls = len(fake_stages)
  with pytest.raises(UserError, match=f'^unreadable metrics file {bad}: '):
    pipeline.run(config, workdir)
  assert len(fake_stages) == calls  # found before any stage ran


# ------------------------------------------------------------------------------------------
# 12. Stale temporary files.


def test_stale_temporary_files_are_removed_when_the_stage_starts_again(tmp_path, monkeypatch):
  workdir = str(tmp_path / 'wd')
  predictions = os.path.join(workdir, 'seg_predictions')
  nested = os.path.join(workdir, 'results', 'VOC2012', 'Segmentation', 'comp6_test_cls')
  os.makedirs(predictions)
  os.makedirs(nested)
  stale = []
  for directory in (predictions, nested):  # as a killed writer of gio.atomic_path leaves them
    fd, path = tempfile.mkstemp(dir=directory, prefix='.im0.png.', suffix='.tmp')
    os.close(fd)
    stale.append(path)
  keep = [os.path.join(predictions, name) for name in ('im0.png', '.notes.tmp', 'x.tmp')]
  for path in keep:
    open(path, 'w').close()
  for directory, name in ((workdir, 'metrics.json'), (os.path.join(workdir, 'metrics'),
                                                      'eval_seg.json')):  # the driver's own
    os.makedirs(directory, exist_ok=True)
    fd, path = tempfile.mkstemp(dir=directory, prefix=f'.{name}.', suffix='.tmp')
    os.close(fd)
    stale.append(path)
  others = os.path.join(workdir, 'pseudo_labels')  # a stage this run does not start
  os.makedirs(others)
  fd, other_tmp = tempfile.mkstemp(dir=others, prefix='.im0.png.', suffix='.tmp')
  os.close(fd)
  seen = []

  def eval_seg_run(config, wd):
    seen.append([os.path.exists(p) for p in stale + keep])
    return {}
  monkeypatch.setattr(importlib.import_module('gwsss_jax.stages.eval_seg'), 'run', eval_seg_run)
  pipeline.run(_tiny_config(workdir, stages='eval_seg'), workdir)
  assert seen == [[False] * 4 + [True] * 3]
  assert os.path.exists(other_tmp)
