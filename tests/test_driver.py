"""The driver: one-line errors with exit status 2, config validation, stage order, the stage
contract (dispatch in order, metrics merged into metrics.json), and atomic writes."""

import importlib
import json
import os
import subprocess
import sys

import pytest

from gwsss_jax import config as config_lib
from gwsss_jax import pipeline
from gwsss_jax.common import io as gio
from gwsss_jax.common.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(tmp_path, *args):
  proc = subprocess.run([sys.executable, '-m', 'gwsss_jax.main', f'--workdir={tmp_path / "wd"}',
                         *args], cwd=REPO, capture_output=True, text=True, check=False)
  return proc.returncode, proc.stderr


@pytest.mark.parametrize('args, named', [
    (['--config=configs/demo.py', '--config.model.bogus=1'], '--config.model.bogus'),
    (['--config=configs/voc.py', '--config.bogus.x=1'], '--config.bogus.x'),
    (['--config=configs/nope.py'], 'configs/nope.py'),
    (['--config=configs/nope.py', '--config.model.num_nodes=2'], 'configs/nope.py'),
    (['--config=configs/voc.py', '--config.model.num_nodes=abc'], 'model.num_nodes'),
    (['--config=configs/voc.py', '--config.model.num_nodes=0'], 'model.num_nodes'),
    (['--config=configs/voc.py', '--config.model.importance_prob=1.5'], 'model.importance_prob'),
    (['--config=configs/voc.py', '--config.model.drop_threshold=-0.1'], 'model.drop_threshold'),
    (['--config=configs/voc.py', '--config.model.backbone=foo'], 'model.backbone'),
    (['--config=configs/voc.py', '--config.stages=train_cls,foo'], 'stages'),
    (['--config=configs/voc.py', '--config.data.root=/nonexistent'], 'data.root'),
    (['--config=configs/voc.py'], 'data.root'),
])
def test_cli_errors_are_one_line(tmp_path, args, named):
  returncode, stderr = _main(tmp_path, *args)
  assert returncode == 2, stderr
  assert stderr.startswith('error: ') and stderr.count('\n') == 1, stderr
  assert named in stderr
  assert 'Traceback' not in stderr


@pytest.mark.parametrize('overrides, hint', [
    # cams.crf exists: the unknown flag is the second one, whose section does not exist.
    (['--config.cams.crf=True', '--config.cams_crf.impl=jax'],
     '--config.cams_crf.impl: unknown config key (did you mean --config.crf.impl or '
     '--config.parallel.impl?)'),
    (['--config.seed=1', '--config.model.num_nodez=2'],
     '--config.model.num_nodez: unknown config key (did you mean --config.model.num_nodes?)'),
    (['--config.modle.num_nodes=2'],
     '--config.modle.num_nodes: unknown config key (did you mean --config.model.num_nodes?)'),
    (['--config.model.width.x=2'],
     '--config.model.width.x: unknown config key (did you mean --config.model.width or '
     '--config.seg.width?)'),
])
def test_unknown_key_names_the_flag_and_the_closest_key(tmp_path, overrides, hint):
  returncode, stderr = _main(tmp_path, '--config=configs/demo.py', *overrides)
  assert (returncode, stderr) == (2, f'error: {hint}\n')


def test_validate_accepts_every_shipped_config():
  import importlib.util  # pylint: disable=g-import-not-at-top
  for name in ('voc', 'coco', 'demo', 'release'):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, 'configs', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config_lib.validate(module.get_config())


@pytest.mark.parametrize('key, value', [
    ('model.num_nodes', 0), ('model.importance_prob', 1.5), ('model.importance_prob', -0.5),
    ('model.graph_steps', -1), ('train.new_lr_mult', -1.0), ('seg.new_bias_lr_mult', -1.0),
    ('train.max_to_keep', 0), ('seg.max_to_keep', 0),
    ('model.drop_threshold', -0.1), ('model.backbone', 'foo'), ('model.variant', 'x'),
    ('model.output_stride', 4), ('model.gru_kernel', 2), ('data.name', 'imagenet'),
    ('data.num_classes', 0), ('stages', 'train_cls,foo'), ('stages', ' , '),
    ('cams.scales', ()), ('seg.model', 'unet'), ('seg.scale_range', (1.5, 0.5)),
    ('train.batch_size', 0), ('pseudo.conflict_threshold', 2.0), ('model.drop_mask', 'eq11'),
    ('cams.oaa_members', 'partners'), ('cams.oaa_first_epoch', 15), ('cams.oaa_first_epoch', -1),
    ('pseudo.cam_norm', 'l2'), ('model.edge_mask', 'classes'), ('model.message_fusion', 'concat'),
    ('model.extra_conv_init', 'zeros'), ('model.drop_output', 'product'),
])
def test_validate_names_the_key(key, value):
  config = config_lib.base_config()
  section, _, field = key.rpartition('.')
  setattr(config[section] if section else config, field, value)
  with pytest.raises(UserError) as e:
    config_lib.validate(config)
  assert str(e.value).startswith(f'config.{key}=')


def test_oaa_first_epoch_is_checked_only_for_oaa():
  config = config_lib.base_config()
  config.train.num_epochs = 1
  config.cams.oaa_first_epoch = 1
  with pytest.raises(UserError, match='cams.oaa_first_epoch'):
    config_lib.validate(config)
  config.cams.method = 'group_inference'
  config_lib.validate(config)


def test_release_variant_needs_groups_of_three():
  config = config_lib.base_config()
  config.model.variant = 'release'
  with pytest.raises(UserError, match='model.num_nodes'):
    config_lib.validate(config)
  config.model.num_nodes = 3
  config_lib.validate(config)


@pytest.mark.parametrize('key, value', [('self_edge', False), ('edge_mask', 'all'),
                                        ('message_fusion', 'gated_conv'),
                                        ('extra_conv_init', 'release'),
                                        ('drop_output', 'average')])
def test_graph_ablation_switches_are_refused_for_the_release_variant(key, value):
  config = config_lib.base_config()
  config.model.variant = 'release'
  config.model.num_nodes = 3
  config_lib.validate(config)
  config.model[key] = value
  with pytest.raises(UserError, match=f'model.{key}=.*paper variant only'):
    config_lib.validate(config)


def test_stage_list_is_in_pipeline_order():
  config = config_lib.base_config()
  assert config_lib.stage_list(config) == list(config_lib.STAGES)
  config.stages = ' eval_seg, train_cls,export_cams ,train_cls'
  assert config_lib.stage_list(config) == ['train_cls', 'export_cams', 'eval_seg']


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
  path = tmp_path / 'out.txt'
  gio.atomic_write_text(str(path), 'old')
  with pytest.raises(RuntimeError):
    with gio.atomic_path(str(path)) as tmp:
      with open(tmp, 'w') as f:
        f.write('partial')
      raise RuntimeError('interrupted')
  assert path.read_text() == 'old'
  assert os.listdir(tmp_path) == ['out.txt']
  gio.atomic_write_text(str(path), 'new')
  assert path.read_text() == 'new' and os.listdir(tmp_path) == ['out.txt']


def test_disk_full_names_the_file_and_the_space_left(small_disk):
  path = small_disk / 'cams' / 'img.npy'
  gio.atomic_write_bytes(str(path), b'old')
  with pytest.raises(UserError) as e:
    gio.atomic_write_bytes(str(path), bytes(4 << 20))
  assert str(e.value).startswith(f'no space left on device writing img.npy to {path.parent} (')
  assert 'left there, about 4.0 MB needed)' in str(e.value)
  assert path.read_bytes() == b'old' and os.listdir(path.parent) == ['img.npy']


def test_disk_full_injected(tmp_path, monkeypatch):
  def full(fd):
    raise OSError(28, 'No space left on device')
  monkeypatch.setattr(gio.os, 'fsync', full)
  with pytest.raises(UserError, match=f'no space left on device writing x.png to {tmp_path} '):
    gio.atomic_write_bytes(str(tmp_path / 'x.png'), b'data')
  assert not os.listdir(tmp_path)


def test_disk_full_without_a_file_name_is_one_line():
  code = ('import errno\nfrom gwsss_jax.common import cli\n'
          'def main(argv):\n  raise OSError(errno.ENOSPC, "No space left on device")\n'
          'cli.run(main)\n')
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                        check=False)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert proc.stderr.startswith('error: no space left on device writing a file to '), proc.stderr


def test_stage_metrics_rebuild_the_summary(tmp_path):
  """Per-stage metrics files, merged into metrics.json, which is rebuilt from them when it is
  deleted or corrupt; an unreadable stage file is one error naming it (issue 18.6)."""
  workdir = str(tmp_path)
  assert gio.read_metrics(workdir) == {}
  gio.write_stage_metrics(workdir, 'eval_cams', {'c': [0.5], 'b': 4})
  gio.write_stage_metrics(workdir, 'train_cls', {'a': 1.0, 'b': 2})
  gio.write_stage_metrics(workdir, 'train_cls', {'b': 3})  # a stage that skipped some work
  with open(gio.stage_metrics_path(workdir, 'train_cls')) as f:
    assert json.load(f) == {'a': 1.0, 'b': 3}
  order = ('train_cls', 'export_cams', 'eval_cams')
  summary = {'a': 1.0, 'b': 4, 'c': [0.5]}  # later stages win
  assert gio.rebuild_metrics(workdir, order) == summary
  summary_path = tmp_path / gio.METRICS_FILE
  for damage in ('{"a": 1.0, "b', None):
    if damage is None:
      os.remove(summary_path)
    else:
      summary_path.write_text(damage)
    assert gio.rebuild_metrics(workdir, order) == summary
    assert json.loads(summary_path.read_text()) == summary
  bad = gio.stage_metrics_path(workdir, 'eval_cams')
  for content in ('{"c": [0.5', '[1, 2]'):
    with open(bad, 'w') as f:
      f.write(content)
    with pytest.raises(UserError) as e:
      gio.rebuild_metrics(workdir, order)
    assert str(e.value).startswith(f'unreadable metrics file {bad}: ') and '\n' not in str(e.value)
  summary_path.write_text('{"x')
  with pytest.raises(UserError, match=f'unreadable metrics file {summary_path}'):
    gio.read_metrics(workdir)


def test_a_metrics_json_from_before_stage_files_is_kept(tmp_path):
  # eval_seg's keys of that time (seg_miou, seg/...) are read under the current names.
  (tmp_path / gio.METRICS_FILE).write_text(json.dumps(
      {'train_cls/mAP': 0.5, 'seg_miou': 0.25, 'seg_oracle/iou_per_class/00_background': 0.75}))
  gio.write_stage_metrics(str(tmp_path / 'other'), 'x', {})  # (another workdir)
  assert gio.rebuild_metrics(str(tmp_path)) == {
      'train_cls/mAP': 0.5, 'eval_seg/miou': 0.25,
      'eval_seg_oracle/iou_per_class/00_background': 0.75}
  gio.write_stage_metrics(str(tmp_path), 'eval_seg', {'eval_seg/miou': 0.5})
  assert gio.rebuild_metrics(str(tmp_path), ('eval_seg',)) == {
      'train_cls/mAP': 0.5, 'eval_seg/miou': 0.5,
      'eval_seg_oracle/iou_per_class/00_background': 0.75}


def test_an_older_eval_seg_metrics_file_takes_the_new_names(tmp_path):
  old = tmp_path / gio.STAGE_METRICS_DIR / 'eval_seg.json'
  old.parent.mkdir()
  old.write_text(json.dumps({'seg_miou': 0.25, 'seg_miou_no_crf': 0.2}))
  gio.write_stage_metrics(str(tmp_path), 'eval_seg', {'eval_seg/miou': 0.5})
  assert json.loads(old.read_text()) == {'eval_seg/miou': 0.5, 'eval_seg/miou_no_crf': 0.2}


def test_summary_and_sweep_tables_read_record_slash_metric_keys():
  from gwsss_jax import sweep  # pylint: disable=g-import-not-at-top
  from gwsss_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  for key, _ in pipeline.SUMMARY + sweep.COLUMNS:
    record, _, metric = key.partition('/')
    assert record in workdir_lib.RECORDS and metric, key
  table = pipeline.summary_table({'eval_seg/miou': 0.5, 'eval_seg_oracle/miou': 0.75,
                                  'train_cls/mAP': 0.25})
  rows = [line.split('|')[1:3] for line in table.splitlines()[2:]]
  assert [(t.strip(), float(v)) for t, v in rows] == [
      ('classification mAP (held-out)', 0.25),
      ('segmentation val mIoU (DeepLab on pseudo labels; with seg.crf if on)', 0.5),
      ('oracle val mIoU (DeepLab on ground truth; with seg.crf if on)', 0.75)]


def test_pipeline_dispatches_stages_in_order_and_merges_metrics(tmp_path, monkeypatch):
  calls = []

  def fake_stage(name):
    def run(config, workdir):
      # Each stage sees the resolved data root and the metrics of the stages before it.
      calls.append((name, config.data.root, sorted(gio.read_metrics(workdir))))
      return {f'{name}/done': 1.0, 'last_stage': name}
    return run

  for name in config_lib.STAGES:
    monkeypatch.setattr(importlib.import_module(f'gwsss_jax.stages.{name}'), 'run',
                        fake_stage(name))
  config = config_lib.base_config()
  config.data.name = 'synthetic'
  config.data.num_classes = 6
  config.data.synthetic.num_train = 4
  config.data.synthetic.num_val = 2
  config.data.synthetic.size = 48
  config.data.train_split = 'train'  # the splits of the built-in dataset, which the data check
  config.data.val_split = 'val'      # reads before the first stage
  config.stages = 'eval_seg,train_cls,pseudo_labels'
  config_lib.lock(config)
  workdir = str(tmp_path / 'wd')
  os.makedirs(workdir)
  with open(os.path.join(workdir, gio.METRICS_FILE), 'w') as f:  # a workdir of older code
    json.dump({'earlier_run': 7}, f)

  metrics = pipeline.run(config, workdir)

  root = os.path.join(workdir, 'data', 'synthetic')
  assert [c[0] for c in calls] == ['train_cls', 'pseudo_labels', 'eval_seg']
  assert all(c[1] == root for c in calls)
  assert calls[1][2] == ['earlier_run', 'last_stage', 'train_cls/done']
  assert metrics == {'earlier_run': 7, 'train_cls/done': 1.0, 'pseudo_labels/done': 1.0,
                     'eval_seg/done': 1.0, 'last_stage': 'eval_seg'}
  assert gio.read_metrics(workdir) == metrics
  with open(gio.stage_metrics_path(workdir, 'pseudo_labels')) as f:
    assert json.load(f) == {'pseudo_labels/done': 1.0, 'last_stage': 'pseudo_labels'}
  assert os.path.isfile(os.path.join(root, 'ImageSets', 'Segmentation', 'train_cls.txt'))
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['data']['root'] == root
