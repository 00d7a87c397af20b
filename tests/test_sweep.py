"""The sweep runner: commands per variant, reuse of a trained classifier, the results table."""

import json
import os
import subprocess
import sys

import numpy as np

from gwsss_jax import config as config_lib

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
  assert sorted(o['model.graph_steps'] for n, (o, _) in by_name.items()
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
  (tmp_path / 'a' / 'metrics.json').write_text(json.dumps({'eval_seg/miou': 0.125}))
  result = _sweep(['--config=configs/demo.py', f'--sweep={sweep_file}', f'--workdir={tmp_path}',
                   '--table_only'])
  assert result.returncode == 0, result.stderr
  assert '[sweep] a' not in result.stdout and '| 0.1250 |' in result.stdout  # seg mIoU, last
  assert '0.1250' in (tmp_path / 'mini.md').read_text()
  assert os.listdir(tmp_path / 'a') == ['metrics.json']


def test_table_from_finished_variants_and_unknown_variant(tmp_path):
  sweep_file = tmp_path / 'mini.py'
  sweep_file.write_text(
      'def get_sweep():\n'
      "  return [('a', {'model.num_nodes': 2}, None), ('b', {'model.graph_steps': 1}, None)]\n")
  for name, miou in (('a', 0.5), ('b', 0.25)):
    os.makedirs(tmp_path / name)
    (tmp_path / name / 'metrics.json').write_text(json.dumps({'eval_cams/pseudo_label_miou': miou}))
  result = _sweep(['--config=configs/demo.py', f'--sweep={sweep_file}',
                   f'--workdir={tmp_path}', '--only=zzz'])
  assert result.returncode == 2 and 'zzz' in result.stderr
  from gwsss_jax import sweep  # pylint: disable=g-import-not-at-top
  text = sweep.table(sweep.load_sweep(str(sweep_file)), str(tmp_path))
  assert '| a | model.num_nodes=2 | - | - | 0.5000 | - | - |' in text
  assert '| b | model.graph_steps=1 | - | - | 0.2500 | - | - |' in text


def test_renamed_keys_in_a_sweep_file_or_set_fail_before_any_variant_runs(tmp_path):
  sweep_file = tmp_path / 'old.py'
  sweep_file.write_text(
      'def get_sweep():\n'
      "  return [('a', {'model.num_nodes': 2}, None), ('b', {'model.drop_rate': 0.6}, None)]\n")
  result = _sweep(['--config=configs/demo.py', f'--sweep={sweep_file}',
                   f'--workdir={tmp_path}', '--print_commands'])
  assert result.returncode == 2 and result.stdout == '', result.stdout
  note = config_lib.RENAMED['model.drop_rate'][1]
  assert result.stderr == (f'error: {sweep_file}: variant b: config.model.drop_rate was renamed '
                           f'config.model.importance_prob ({note}); docs/training.md lists the '
                           'renamed keys\n')
  good = tmp_path / 'good.py'
  good.write_text("def get_sweep():\n  return [('a', {'model.num_nodes': 2}, None)]\n")
  result = _sweep(['--config=configs/demo.py', f'--sweep={good}', f'--workdir={tmp_path}',
                   '--table_only', '--set=data.synthetic.size=48,seg.head_lr_mult=5'])
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  assert result.stderr.startswith('error: --set=seg.head_lr_mult=5: config.seg.head_lr_mult was '
                                  'renamed config.seg.new_lr_mult ('), result.stderr
  assert sorted(os.listdir(tmp_path)) == ['good.py', 'old.py']  # nothing ran, no table


def test_missing_sweep_file_is_a_clear_error(tmp_path):
  result = _sweep(['--config=configs/demo.py', f'--sweep={tmp_path}/nope.py',
                   f'--workdir={tmp_path}'])
  assert result.returncode == 2
  assert 'nope.py' in result.stderr and 'Traceback' not in result.stderr


def _mini_sweep(tmp_path, figures):
  """Sweep file `mini.py` with variants a and b; figures {(variant, seed): {key: value}} go into
  the seed workdirs' metrics.json."""
  sweep_file = tmp_path / 'mini.py'
  sweep_file.write_text(
      'def get_sweep():\n'
      "  return [('a', {'model.num_nodes': 2}, None), ('b', {'cams.source': 'graph'}, 'a')]\n")
  for (name, seed), values in figures.items():
    os.makedirs(tmp_path / name / f'seed{seed}')
    (tmp_path / name / f'seed{seed}' / 'metrics.json').write_text(json.dumps(values))
  return sweep_file


def test_seed_table_mean_std_n_and_raw_csv(tmp_path):
  pseudo, cov = 'eval_cams/pseudo_label_miou', 'eval_cams/pseudo_label_coverage'
  sweep_file = _mini_sweep(tmp_path, {
      ('a', 0): {pseudo: 0.5, cov: 0.25}, ('a', 1): {pseudo: 0.6}, ('a', 2): {pseudo: 0.7},
      ('b', 0): {pseudo: 0.125}})
  result = _sweep(['--config=configs/demo.py', f'--sweep={sweep_file}', f'--workdir={tmp_path}',
                   '--table_only', '--seeds=0,1,2'])
  assert result.returncode == 0, result.stderr
  # numpy computes the expected figures: mean, sample standard deviation (ddof=1), count.
  values = np.array([0.5, 0.6, 0.7])
  want = f'{values.mean():.4f} ± {values.std(ddof=1):.4f} (n=3)'
  assert want == '0.6000 ± 0.1000 (n=3)'
  text = (tmp_path / 'mini.md').read_text()
  assert f'| a | model.num_nodes=2 | - | - | {want} | 0.2500 ± 0.0000 (n=1) | - |' in text
  assert '| b | cams.source=graph [classifier of a] | - | - | 0.1250 ± 0.0000 (n=1) |' in text
  rows = (tmp_path / 'mini_seeds.csv').read_text().splitlines()
  assert rows[0].split(',')[:2] == ['variant', 'seed'] and len(rows) == 7
  assert rows[1] == 'a,0,,,0.5,0.25,' and rows[3] == 'a,2,,,0.7,,' and rows[5] == 'b,1,,,,,'
  assert sorted(os.listdir(tmp_path / 'a')) == ['seed0', 'seed1', 'seed2']  # ran nothing


def test_seed_commands_and_reuse_per_seed(tmp_path):
  sweep_file = _mini_sweep(tmp_path, {})
  result = _sweep(['--config=configs/demo.py', f'--sweep={sweep_file}', f'--workdir={tmp_path}',
                   '--print_commands', '--seeds=3,4'])
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 4
  assert f'--workdir={tmp_path}/a/seed3' in lines[0] and ' --config.seed=3 ' in lines[0]
  assert f'--workdir={tmp_path}/a/seed4' in lines[1] and ' --config.seed=4 ' in lines[1]
  assert '-m gwsss_jax.sweep' in lines[2] and '--only=b' in lines[2]
  assert lines[2].endswith('--seeds=3') and lines[3].endswith('--seeds=4')
  # Reusing copies the same seed's classifier; a missing one is a clear error.
  os.makedirs(tmp_path / 'a' / 'seed3' / 'cls_checkpoints' / '7')
  (tmp_path / 'a' / 'seed3' / 'metrics.json').write_text(json.dumps({'train_cls/mAP': 0.75}))
  result = _sweep(['--config=configs/demo.py', f'--sweep={sweep_file}', f'--workdir={tmp_path}',
                   '--only=b', '--seeds=4'])
  assert result.returncode == 2 and 'a/seed4/cls_checkpoints' in result.stderr
  bad = _sweep(['--config=configs/demo.py', f'--sweep={sweep_file}', f'--workdir={tmp_path}',
                '--table_only', '--seeds=0,x'])
  assert bad.returncode == 2 and '--seeds=0,x' in bad.stderr


def test_docs_msrc_print_commands_as_written():
  """docs/msrc.md's command, run exactly as written (printing the commands needs no data)."""
  import shlex  # pylint: disable=g-import-not-at-top
  cmd = 'python -m gwsss_jax.sweep --config=configs/msrc.py --sweep=configs/sweeps/msrc_groupwise.py --workdir=runs/msrc_groupwise --seeds=0,1,2 --print_commands'  # pylint: disable=line-too-long
  with open(os.path.join(REPO, 'docs', 'msrc.md')) as f:
    assert cmd in f.read().splitlines()
  args = shlex.split(cmd)
  assert args[:3] == ['python', '-m', 'gwsss_jax.sweep']
  result = _sweep(args[3:])
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 6 and all('-m gwsss_jax.main' in l for l in lines)
  for variant in ('single_image_K1', 'group_K3_T3'):
    for seed in (0, 1, 2):
      assert sum(f'runs/msrc_groupwise/{variant}/seed{seed} ' in l and
                 f'--config.seed={seed}' in l for l in lines) == 1
  assert sum('--config.train.repeats_per_epoch=3' in l for l in lines) == 3
