"""The sweep runner: commands per variant, reuse of a trained classifier, the results table."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sweep(args, cwd=REPO):
  return subprocess.run([sys.executable, '-m', 'gwsss_jax.sweep'] + args, cwd=cwd,
                        capture_output=True, text=True, check=False)


def test_table3_lists_the_paper_ablations():
  sys.path.insert(0, REPO)
  from gwsss_jax import sweep  # pylint: disable=g-import-not-at-top
  variants = sweep.load_sweep(os.path.join(REPO, 'configs/sweeps/table3.py'))
  by_name = {name: (overrides, reuse) for name, overrides, reuse in variants}
  assert sorted(o['model.num_nodes'] for n, (o, _) in by_name.items()
                if n.startswith('K') or n.startswith('single') or n.startswith('default')) == [
                    1, 3, 4, 5, 6]
  assert sorted(o['model.num_steps'] for n, (o, _) in by_name.items()
                if n.startswith('T')) == [2, 4, 5]
  assert by_name['no_graph_dropout'][0]['model.graph_dropout'] is False
  assert {o['cams.source'] for n, (o, _) in by_name.items() if n.startswith('cam_')} == {
      'intermediate', 'graph', 'ensemble'}
  assert all(r == 'default_K4_T3' for n, (_, r) in by_name.items() if n.startswith('cam_'))


def test_table3_readout_rows_share_the_default_rows_cam_pipeline(tmp_path, monkeypatch):
  """The readout rows differ from the default row in cams.source only, and reuse its classifier
  and OAA store: the ensemble row is the default row's config, on a copy of its store."""
  sys.path.insert(0, REPO)
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from demo_config import demo_config  # pylint: disable=g-import-not-at-top
  from gwsss_jax import sweep  # pylint: disable=g-import-not-at-top
  variants = sweep.load_sweep(os.path.join(REPO, 'configs/sweeps/table3.py'))
  by_name = {name: (overrides, reuse) for name, overrides, reuse in variants}
  default = demo_config(by_name['default_K4_T3'][0], '').to_dict()
  assert default['cams']['method'] == 'oaa' and default['cams']['oaa_all_readouts']
  for source in ('intermediate', 'graph', 'ensemble'):
    row = demo_config(by_name[f'cam_{source}'][0], '').to_dict()
    assert row['cams'].pop('source') == source
    assert row == dict(default, cams={k: v for k, v in default['cams'].items() if k != 'source'})
  # The reuse copies the checkpoints and the OAA store, and drops train_cls.
  for directory in sweep.REUSED_DIRS:
    os.makedirs(tmp_path / 'default_K4_T3' / directory)
    (tmp_path / 'default_K4_T3' / directory / 'f').write_text(directory)
  monkeypatch.setattr(sweep, 'FLAGS', type('Flags', (), {'workdir': str(tmp_path)}))
  stages = sweep._reuse_classifier('cam_ensemble', 'default_K4_T3',  # pylint: disable=protected-access
                                   'train_cls,export_cams,eval_cams')
  assert stages == 'export_cams,eval_cams'
  for directory in sweep.REUSED_DIRS:
    assert (tmp_path / 'cam_ensemble' / directory / 'f').read_text() == directory


def test_print_commands_one_per_variant(tmp_path):
  result = _sweep(['--config=configs/demo.py', '--sweep=configs/sweeps/table3.py',
                   f'--workdir={tmp_path}', '--print_commands', '--stages=train_cls'])
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 15
  assert f'--workdir={tmp_path}/K5' in result.stdout
  assert any('--config.model.num_nodes=5' in l and '/K5' in l for l in lines)
  # Variants reusing a classifier run as this sweep restricted to them (it copies it first).
  cam = [l for l in lines if 'cam_graph' in l]
  assert len(cam) == 1 and '-m gwsss_jax.sweep' in cam[0] and '--only=cam_graph' in cam[0]
  assert '--stages=train_cls' in cam[0]
  assert sum('-m gwsss_jax.main' in l for l in lines) == 12


def test_table_only_runs_nothing(tmp_path):
  sweep_file = tmp_path / 'mini.py'
  sweep_file.write_text("def get_sweep():\n  return [('a', {'model.num_nodes': 2}, None)]\n")
  os.makedirs(tmp_path / 'a')
  (tmp_path / 'a' / 'metrics.json').write_text(json.dumps({'seg_miou': 0.125}))
  result = _sweep(['--config=configs/demo.py', f'--sweep={sweep_file}', f'--workdir={tmp_path}',
                   '--table_only'])
  assert result.returncode == 0, result.stderr
  assert '[sweep] a' not in result.stdout and '0.1250' in result.stdout
  assert '0.1250' in (tmp_path / 'mini.md').read_text()
  assert os.listdir(tmp_path / 'a') == ['metrics.json']


def test_table_from_finished_variants_and_unknown_variant(tmp_path):
  sweep_file = tmp_path / 'mini.py'
  sweep_file.write_text(
      'def get_sweep():\n'
      "  return [('a', {'model.num_nodes': 2}, None), ('b', {'model.num_steps': 1}, None)]\n")
  for name, miou in (('a', 0.5), ('b', 0.25)):
    os.makedirs(tmp_path / name)
    (tmp_path / name / 'metrics.json').write_text(json.dumps({'eval_cams/pseudo_label_miou': miou}))
  result = _sweep(['--config=configs/demo.py', f'--sweep={sweep_file}',
                   f'--workdir={tmp_path}', '--only=zzz'])
  assert result.returncode == 2 and 'zzz' in result.stderr
  from gwsss_jax import sweep  # pylint: disable=g-import-not-at-top
  text = sweep.table(sweep.load_sweep(str(sweep_file)), str(tmp_path))
  assert '| a | model.num_nodes=2 | - | - | 0.5000 | - | - |' in text
  assert '| b | model.num_steps=1 | - | - | 0.2500 | - | - |' in text


def test_missing_sweep_file_is_a_clear_error(tmp_path):
  result = _sweep(['--config=configs/demo.py', f'--sweep={tmp_path}/nope.py',
                   f'--workdir={tmp_path}'])
  assert result.returncode == 2
  assert 'nope.py' in result.stderr and 'Traceback' not in result.stderr
