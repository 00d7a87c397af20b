"""Config keys renamed so that their names say what they mean (`config.RENAMED`): each old name
fails, at every entry point, with an error that names the new key; the learning-rate keys of
`train` and `seg` follow one scheme."""

import os
import subprocess
import sys

import pytest

from gwsss_jax import config as config_lib
from gwsss_jax.common import cli
from gwsss_jax.common.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(module, *args):
  proc = subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, capture_output=True,
                        text=True, check=False)
  return proc.returncode, proc.stderr


def test_old_names_are_gone_and_new_names_exist():
  keys = set(config_lib.leaf_keys(config_lib.base_config()))
  for old, (new, _) in config_lib.RENAMED.items():
    assert old not in keys and new in keys, (old, new)
  assert {'seg.max_to_keep', 'seg.backbone_bias_lr_mult', 'seg.new_bias_lr_mult'} <= keys


@pytest.mark.parametrize('old', sorted(config_lib.RENAMED))
def test_an_old_flag_names_the_new_key(old):
  new = config_lib.RENAMED[old][0]
  message = cli._unknown_override(  # pylint: disable=protected-access
      ['main', '--config=configs/demo.py', '--config.seed=1', f'--config.{old}=1'])
  assert message.startswith(f'--config.{old} was renamed --config.{new}'), message


@pytest.mark.parametrize('module, extra', [
    ('gwsss_jax.main', ['--workdir=/nonexistent/wd']),
    ('gwsss_jax.predict', ['--workdir=/nonexistent/wd', '--images=/nonexistent/in',
                           '--out=/nonexistent/out']),
    ('gwsss_jax.bench', ['--quick']),
])
def test_an_old_flag_fails_as_one_line_in_every_program(module, extra):
  returncode, stderr = _run(module, '--config=configs/demo.py', '--config.model.drop_rate=0.5',
                            *extra)
  assert returncode == 2, stderr
  assert stderr == (f'error: --config.model.drop_rate was renamed --config.model.importance_prob'
                    f' ({config_lib.RENAMED["model.drop_rate"][1]}); docs/training.md lists the '
                    'renamed keys\n')


def test_a_config_file_that_sets_an_old_key_fails(tmp_path):
  # A config file is not locked while it runs: the old name would otherwise be a new field
  # that nothing reads, and T would silently stay at its default.
  path = tmp_path / 'old.py'
  path.write_text('from gwsss_jax import config as config_lib\n\n\ndef get_config():\n'
                  '  config = config_lib.base_config()\n  config.model.num_steps = 1\n'
                  '  return config\n')
  returncode, stderr = _run('gwsss_jax.main', f'--config={path}', f'--workdir={tmp_path}/wd')
  assert (returncode, stderr) == (2, 'error: config.model.num_steps was renamed '
                                     'config.model.graph_steps (the rounds T of message passing); '
                                     'docs/training.md lists the renamed keys\n')
  assert not os.path.exists(tmp_path / 'wd')


@pytest.mark.parametrize('old', sorted(config_lib.RENAMED))
def test_validate_and_the_library_entry_points_refuse_an_old_key(old, tmp_path):
  from gwsss_jax import bench  # pylint: disable=g-import-not-at-top
  from gwsss_jax import predict  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  section, name = old.split('.')
  config[section][name] = 1.0  # unlocked, as a config file sees it
  new = config_lib.RENAMED[old][0]
  for call in (lambda: config_lib.validate(config),
               lambda: predict.predict_folder(config, str(tmp_path), str(tmp_path), str(tmp_path)),
               lambda: bench.run(config, ['matmul'], quick=True)):
    with pytest.raises(UserError, match=f'config.{old} was renamed config.{new}'):
      call()


def test_records_under_old_names_convert_the_drop_probability_of_the_release_variant():
  old = {'model.variant': 'release', 'model.drop_rate': 0.8, 'model.num_steps': 3,
         'seg.head_lr_mult': 10.0, 'seed': 0}
  assert config_lib.current_names(old) == {
      'model.variant': 'release', 'model.importance_prob': 0.2, 'model.graph_steps': 3,
      'seg.new_lr_mult': 10.0, 'seed': 0}
  paper = dict(old, **{'model.variant': 'paper'})
  assert config_lib.current_names(paper)['model.importance_prob'] == 0.8


def test_bias_rates_follow_their_weights_unless_set():
  config = config_lib.lock(config_lib.base_config())
  for section in ('train', 'seg'):
    c = config[section]
    assert (c.backbone_bias_lr_mult, c.new_lr_mult, c.new_bias_lr_mult) == (2.0, 10.0, 20.0)
    c.new_lr_mult = 1.0
    assert c.new_bias_lr_mult == 2.0
    c.new_bias_lr_mult = 5.0
    c.new_lr_mult = 3.0
    assert c.new_bias_lr_mult == 5.0
  t = config.train
  assert (t.graph_lr_mult, t.graph_bias_lr_mult) == (None, None)  # unset: the new layers' rates
  t.graph_lr_mult = 50.0
  assert (t.new_lr_mult, t.new_bias_lr_mult) == (3.0, 5.0)
  config_lib.validate(config)
  t.graph_bias_lr_mult = -1.0
  with pytest.raises(UserError, match='train.graph_bias_lr_mult'):
    config_lib.validate(config)


def test_segmentation_keeps_its_own_checkpoints(monkeypatch, tmp_path):
  """train_seg reads seg.max_to_keep, not train's."""
  from gwsss_jax.stages import train_seg  # pylint: disable=g-import-not-at-top
  from gwsss_jax.train import checkpoint  # pylint: disable=g-import-not-at-top
  seen = {}

  class Stop(Exception):
    pass

  def spy(directory, **kwargs):
    seen.update(kwargs)
    raise Stop
  monkeypatch.setattr(checkpoint, 'Checkpointer', spy)
  config = config_lib.base_config()
  config.train.max_to_keep, config.seg.max_to_keep = 3, 7
  with pytest.raises(Stop):
    train_seg.run(config, str(tmp_path))
  assert seen['max_to_keep'] == 7


_CHOICE_KEYS = (
    'data.name', 'data.resize_mode', 'data.loader', 'data.normalization', 'model.variant',
    'model.backbone', 'model.drop_mask', 'model.edge_mask', 'model.message_fusion',
    'model.drop_output', 'model.extra_conv_init', 'model.dtype', 'train.eval_resolution',
    'train.group_rule', 'train.anchor_order', 'parallel.impl', 'cams.method', 'cams.source',
    'cams.oaa_members', 'pseudo.cam_norm', 'crf.impl', 'seg.model')


@pytest.mark.parametrize('key', _CHOICE_KEYS)
def test_a_value_outside_its_choices_names_the_key_and_lists_them(key):
  config = config_lib.base_config()
  section, name = key.split('.')
  valid = config[section][name]
  config[section][name] = 'bogus'
  with pytest.raises(UserError) as raised:
    config_lib.validate(config)
  message = str(raised.value)
  assert message.startswith(f"config.{key}='bogus': "), message
  listed = message.split('choose from ', 1)[1].split(', ')
  assert repr(valid) in listed and "'bogus'" not in listed, message
