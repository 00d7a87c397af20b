"""Runs a sweep of config overrides and tabulates the results.

  python -m gwsss_jax.sweep --config=configs/demo.py --sweep=configs/sweeps/table3.py \
      --workdir=runs/table3 [--stages=...] [--only=K3,T2] [--print_commands] [--table_only]

A sweep file defines `get_sweep() -> [(name, {key: value}, reuse_or_None), ...]`. Each variant
runs `gwsss_jax.main` in its own process and workdir (`<workdir>/<name>`), so a crashed variant
does not take the others down and a rerun resumes where it stopped (every stage skips finished
work). The table of the metrics each variant left in its metrics.json is written to
`<workdir>/<sweep name>.md`.

On a cluster, `--print_commands` prints one command per variant (one job each, e.g. the lines of
a SLURM job array, `launch/sweep_slurm.sh`): `gwsss_jax.main` for a variant that trains its own
classifier, and this sweep restricted to the variant (`--only=<name>`) for one that reuses
another's classifier, which it copies first; those run after the variant they reuse.
`--table_only` then writes the table from the finished workdirs.
"""

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys

from absl import flags

from gwsss_jax.common import cli
from gwsss_jax.common import io as gio
from gwsss_jax.common.errors import UserError
from gwsss_jax.evaluation import metrics as metrics_lib

FLAGS = flags.FLAGS

# (metrics.json key, column title) of the table.
COLUMNS = (('train_cls/mAP', 'cls mAP'), ('eval_cams/cam_miou', 'CAM mIoU'),
           ('eval_cams/pseudo_label_miou', 'pseudo mIoU'),
           ('eval_cams/pseudo_label_coverage', 'coverage'), ('seg_miou', 'seg mIoU'))
# What a variant reusing another's classifier copies: its checkpoints and its OAA store.
REUSED_DIRS = ('cls_checkpoints', 'oaa')


def load_sweep(path: str):
  if not os.path.exists(path):
    raise UserError(f'sweep file not found: {path}')
  spec = importlib.util.spec_from_file_location('sweep_file', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise UserError(f'{path}: defines no get_sweep()')
  return module.get_sweep()


def _format_value(value) -> str:
  if isinstance(value, bool):
    return str(value)
  if isinstance(value, (tuple, list)):
    return '(' + ','.join(str(v) for v in value) + ')'
  return str(value)


def variant_command(name: str, overrides: dict, stages: str) -> list:
  args = [sys.executable, '-m', 'gwsss_jax.main', f'--config={FLAGS.config}',
          f'--workdir={os.path.join(FLAGS.workdir, name)}']
  for key, value in overrides.items():
    args.append(f'--config.{key}={_format_value(value)}')
  for item in FLAGS.set:
    args.append(f'--config.{item}')
  if stages:
    args.append(f'--config.stages={stages}')
  return args


def reuse_command(name: str) -> list:
  """This sweep restricted to `name` (it copies the reused classifier, then runs the variant)."""
  args = [sys.executable, '-m', 'gwsss_jax.sweep', f'--config={FLAGS.config}',
          f'--sweep={FLAGS.sweep}', f'--workdir={FLAGS.workdir}', f'--only={name}']
  if FLAGS.stages:
    args.append(f'--stages={FLAGS.stages}')
  if FLAGS.set:
    args.append(f'--set={",".join(FLAGS.set)}')
  return args


def _reuse_classifier(name: str, reuse: str, stages: str) -> str:
  """Copies the trained classifier of `reuse` (and the OAA maps it accumulated, when it did)
  into the variant; drops train_cls from stages."""
  for directory in REUSED_DIRS:
    src = os.path.join(FLAGS.workdir, reuse, directory)
    dst = os.path.join(FLAGS.workdir, name, directory)
    if not os.path.isdir(src):
      if directory == REUSED_DIRS[0]:
        raise UserError(f'variant {name} reuses {reuse}, whose classifier {src} does not exist '
                        'yet')
      continue
    if not os.path.isdir(dst):
      shutil.copytree(src, dst + '.tmp', dirs_exist_ok=True)
      os.replace(dst + '.tmp', dst)
  base_metrics = gio.read_metrics(os.path.join(FLAGS.workdir, reuse))
  gio.write_stage_metrics(os.path.join(FLAGS.workdir, name), 'train_cls',
                          {k: v for k, v in base_metrics.items() if k.startswith('train_cls/')})
  return ','.join(s for s in stages.split(',') if s.strip() != 'train_cls')


def table(variants, workdir: str) -> str:
  rows = []
  for name, overrides, reuse in variants:
    metrics = gio.read_metrics(os.path.join(workdir, name))
    change = ', '.join(f'{k}={_format_value(v)}' for k, v in overrides.items()) or '(paper)'
    if reuse:
      change += f' [classifier of {reuse}]'
    rows.append((name, change) + tuple(
        float(metrics[k]) if k in metrics else '-' for k, _ in COLUMNS))
  return metrics_lib.format_table(rows, ('variant', 'overrides') + tuple(t for _, t in COLUMNS))


def main(argv):
  del argv
  variants = load_sweep(FLAGS.sweep)
  names = [v[0] for v in variants]
  unknown = sorted(set(FLAGS.only) - set(names))
  if unknown:
    raise UserError(f'--only names unknown variants {unknown}; the sweep has {names}')
  selected = [v for v in variants if not FLAGS.only or v[0] in FLAGS.only]
  if FLAGS.table_only:
    selected = []
  default_stages = FLAGS.stages
  if not default_stages:
    from gwsss_jax import config as config_lib  # pylint: disable=g-import-not-at-top
    default_stages = ','.join(config_lib.STAGES)
  for name, overrides, reuse in selected:
    stages = default_stages
    if FLAGS.print_commands:
      command = reuse_command(name) if reuse else variant_command(name, overrides, stages)
      print(shlex.join(command))
      continue
    if reuse:
      stages = _reuse_classifier(name, reuse, stages)
    print(f'[sweep] {name}: {json.dumps(overrides)}', flush=True)
    result = subprocess.run(variant_command(name, overrides, stages), check=False)
    if result.returncode:
      print(f'[sweep] {name} failed with exit status {result.returncode}', flush=True)
  if FLAGS.print_commands:
    return
  sweep_name = os.path.splitext(os.path.basename(FLAGS.sweep))[0]
  text = table(variants, FLAGS.workdir)
  gio.atomic_write_text(os.path.join(FLAGS.workdir, f'{sweep_name}.md'), text + '\n')
  print(text)


def _define_flags():
  """Command-line flags, defined only when run as a program (the module is also a library)."""
  flags.DEFINE_string('config', None, 'Base config file (configs/*.py).')
  flags.DEFINE_string('sweep', None, 'Sweep file with get_sweep().')
  flags.DEFINE_string('workdir', None, 'Parent directory of the variants\' workdirs.')
  flags.DEFINE_string('stages', '', 'Override config.stages for every variant ("" = config\'s).')
  flags.DEFINE_list('only', [], 'Run only these variants.')
  flags.DEFINE_list('set', [], 'Extra overrides for every variant, e.g. train.num_epochs=2.')
  flags.DEFINE_bool('print_commands', False, 'Print one command per variant and exit.')
  flags.DEFINE_bool('table_only', False, 'Run nothing; write the table of the finished variants.')
  flags.mark_flags_as_required(['config', 'sweep', 'workdir'])


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
