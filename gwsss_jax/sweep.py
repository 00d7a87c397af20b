"""Runs a sweep of config overrides and tabulates the results.

  python -m gwsss_jax.sweep --config=configs/demo.py --sweep=configs/sweeps/table3.py \
      --workdir=runs/table3 [--stages=...] [--only=K3,T2] [--seeds=0,1,2] [--print_commands]
      [--table_only]

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

`--seeds=0,1,2` runs every variant once per seed (`--config.seed=<s>`, workdir
`<workdir>/<name>/seed<s>`; a reused classifier is the same seed's). Each cell of the table is
then `mean ± std (n=...)` over the seeds that have the figure (std: the sample standard
deviation, ddof=1; 0 for one seed), and every seed's raw figures go to
`<workdir>/<sweep name>_seeds.csv`.
"""

import csv
import importlib.util
import io
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
           ('eval_cams/pseudo_label_coverage', 'coverage'), ('eval_seg/miou', 'seg mIoU'))
# What a variant reusing another's classifier copies: its checkpoints and its OAA store.
REUSED_DIRS = ('cls_checkpoints', 'oaa')


def run_dir(workdir: str, name: str, seed=None) -> str:
  """The workdir of a variant, or of one seed of it."""
  path = os.path.join(workdir, name)
  return path if seed is None else os.path.join(path, f'seed{seed}')


def load_sweep(path: str):
  if not os.path.exists(path):
    raise UserError(f'sweep file not found: {path}')
  spec = importlib.util.spec_from_file_location('sweep_file', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise UserError(f'{path}: defines no get_sweep()')
  return module.get_sweep()


def check_keys(variants, sets=()) -> None:
  """UserError naming the new key where a variant's overrides or a `--set` item use a renamed
  key (`config.RENAMED`), before any variant runs."""
  from gwsss_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  for name, overrides, _ in variants:
    for key in overrides:
      config_lib.check_not_renamed(key, f'{FLAGS.sweep}: variant {name}')
  for item in sets:
    config_lib.check_not_renamed(item.split('=', 1)[0].strip(), f'--set={item}')


def _format_value(value) -> str:
  if isinstance(value, bool):
    return str(value)
  if isinstance(value, (tuple, list)):
    return '(' + ','.join(str(v) for v in value) + ')'
  return str(value)


def variant_command(name: str, overrides: dict, stages: str, seed=None) -> list:
  args = [sys.executable, '-m', 'gwsss_jax.main', f'--config={FLAGS.config}',
          f'--workdir={run_dir(FLAGS.workdir, name, seed)}']
  for key, value in overrides.items():
    args.append(f'--config.{key}={_format_value(value)}')
  for item in FLAGS.set:
    args.append(f'--config.{item}')
  if seed is not None:
    args.append(f'--config.seed={seed}')
  if stages:
    args.append(f'--config.stages={stages}')
  return args


def reuse_command(name: str, seed=None) -> list:
  """This sweep restricted to `name` (it copies the reused classifier, then runs the variant)."""
  args = [sys.executable, '-m', 'gwsss_jax.sweep', f'--config={FLAGS.config}',
          f'--sweep={FLAGS.sweep}', f'--workdir={FLAGS.workdir}', f'--only={name}']
  if seed is not None:
    args.append(f'--seeds={seed}')
  if FLAGS.stages:
    args.append(f'--stages={FLAGS.stages}')
  if FLAGS.set:
    args.append(f'--set={",".join(FLAGS.set)}')
  return args


def _reuse_classifier(name: str, reuse: str, stages: str, seed=None) -> str:
  """Copies the trained classifier of `reuse` (and the OAA maps it accumulated, when it did)
  into the variant (the same seed's); drops train_cls from stages."""
  for directory in REUSED_DIRS:
    src = os.path.join(run_dir(FLAGS.workdir, reuse, seed), directory)
    dst = os.path.join(run_dir(FLAGS.workdir, name, seed), directory)
    if not os.path.isdir(src):
      if directory == REUSED_DIRS[0]:
        raise UserError(f'variant {name} reuses {reuse}, whose classifier {src} does not exist '
                        'yet')
      continue
    if not os.path.isdir(dst):
      shutil.copytree(src, dst + '.tmp', dirs_exist_ok=True)
      os.replace(dst + '.tmp', dst)
  base_metrics = gio.read_metrics(run_dir(FLAGS.workdir, reuse, seed))
  gio.write_stage_metrics(run_dir(FLAGS.workdir, name, seed), 'train_cls',
                          {k: v for k, v in base_metrics.items() if k.startswith('train_cls/')})
  return ','.join(s for s in stages.split(',') if s.strip() != 'train_cls')


def _change(overrides: dict, reuse) -> str:
  change = ', '.join(f'{k}={_format_value(v)}' for k, v in overrides.items()) or '(paper)'
  return change + (f' [classifier of {reuse}]' if reuse else '')


def seed_figures(variants, workdir: str, seeds) -> list:
  """(variant, seed, {column key: value}) of every variant and seed, from the workdirs."""
  out = []
  for name, _, _ in variants:
    for seed in seeds:
      metrics = gio.read_metrics(run_dir(workdir, name, seed))
      out.append((name, seed, {k: float(metrics[k]) for k, _ in COLUMNS if k in metrics}))
  return out


def mean_std(values) -> tuple:
  """(mean, sample standard deviation (ddof=1; 0 for one value), n)."""
  values = [float(v) for v in values]
  n = len(values)
  mean = sum(values) / n
  std = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
  return mean, std, n


def table(variants, workdir: str, seeds=None) -> str:
  """The Markdown table: one figure per cell, or `mean ± std (n=...)` over `seeds`."""
  rows = []
  if seeds:
    figures = seed_figures(variants, workdir, seeds)
  for name, overrides, reuse in variants:
    if seeds:
      cells = []
      for key, _ in COLUMNS:
        values = [f[key] for n, _, f in figures if n == name and key in f]
        cells.append('{:.4f} ± {:.4f} (n={})'.format(*mean_std(values)) if values else '-')
    else:
      metrics = gio.read_metrics(run_dir(workdir, name))
      cells = [float(metrics[k]) if k in metrics else '-' for k, _ in COLUMNS]
    rows.append((name, _change(overrides, reuse)) + tuple(cells))
  return metrics_lib.format_table(rows, ('variant', 'overrides') + tuple(t for _, t in COLUMNS))


def seeds_csv(variants, workdir: str, seeds) -> str:
  """Every seed's raw figures: variant, seed, then the table's columns (empty when missing)."""
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator='\n')
  writer.writerow(['variant', 'seed'] + [k for k, _ in COLUMNS])
  for name, seed, figures in seed_figures(variants, workdir, seeds):
    writer.writerow([name, seed] + [repr(figures[k]) if k in figures else ''
                                    for k, _ in COLUMNS])
  return buf.getvalue()


def main(argv):
  del argv
  variants = load_sweep(FLAGS.sweep)
  check_keys(variants, FLAGS.set)
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
  try:
    seeds = [int(s) for s in FLAGS.seeds] or [None]
  except ValueError:
    raise UserError(f'--seeds={",".join(FLAGS.seeds)}: seeds must be integers') from None
  for name, overrides, reuse in selected:
    for seed in seeds:
      stages = default_stages
      label = name if seed is None else f'{name} seed {seed}'
      if FLAGS.print_commands:
        command = (reuse_command(name, seed) if reuse
                   else variant_command(name, overrides, stages, seed))
        print(shlex.join(command))
        continue
      if reuse:
        stages = _reuse_classifier(name, reuse, stages, seed)
      print(f'[sweep] {label}: {json.dumps(overrides)}', flush=True)
      result = subprocess.run(variant_command(name, overrides, stages, seed), check=False)
      if result.returncode:
        print(f'[sweep] {label} failed with exit status {result.returncode}', flush=True)
  if FLAGS.print_commands:
    return
  sweep_name = os.path.splitext(os.path.basename(FLAGS.sweep))[0]
  seeds = [s for s in seeds if s is not None]
  text = table(variants, FLAGS.workdir, seeds)
  if seeds:
    gio.atomic_write_text(os.path.join(FLAGS.workdir, f'{sweep_name}_seeds.csv'),
                          seeds_csv(variants, FLAGS.workdir, seeds))
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
  flags.DEFINE_list('seeds', [], 'Run every variant with each of these seeds (config.seed); the '
                    'table then shows mean ± std over them.')
  flags.DEFINE_bool('print_commands', False, 'Print one command per variant and exit.')
  flags.DEFINE_bool('table_only', False, 'Run nothing; write the table of the finished variants.')
  flags.mark_flags_as_required(['config', 'sweep', 'workdir'])


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
