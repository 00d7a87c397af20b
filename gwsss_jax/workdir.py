"""What the driver keeps in a workdir besides the stages' outputs, so that a workdir is used by
one run at a time and never holds results of two configs without saying so.

- `lock`: an exclusive advisory lock (`fcntl.flock`) on `<workdir>/.lock` for the whole run. The
  kernel releases it when the run ends or dies, so a killed run never leaves it behind.
- Stage records, `<workdir>/stages/<record>.json`: the config keys that the outputs of a stage
  depend on (`depends_on`), written when the stage starts. `check` compares them with the config
  of a new run before anything runs, for every stage the run reads from or writes to.
  `discard_from` deletes a stage's outputs and those of every stage that reads them.
- Stage outputs (`outputs`): what `discard_from` deletes, and where `clean_stale_tmp` removes the
  temporary files of writes that an earlier, killed run left unfinished.

A record is named after the stage, except that the oracle segmentation run
(`seg.oracle=True`), which lives beside the pseudo-label run, is `train_seg_oracle` /
`eval_seg_oracle`.
"""

import contextlib
import fcntl
import json
import os
import shutil
import socket
import sys
import time

import ml_collections

from gwsss_jax import config as config_lib
from gwsss_jax.common import io as gio
from gwsss_jax.common.errors import UserError

LOCK_FILE = '.lock'
RECORD_DIR = 'stages'

# Where the same data lives, not what it is: a moved dataset or workdir changes nothing.
_LOCATIONS = ('data.root', 'data.cache_dir', 'data.tfds_data_dir')
# Keys that change how a run goes (logging, checkpoint spacing, workers, batching of inference,
# the parallel implementation), not what it computes.
_NO_EFFECT = ('data.prefetch', 'data.num_threads', 'train.log_every_steps',
              'train.checkpoint_every_steps', 'train.max_to_keep', 'train.eval_every_epochs', 'train.profile_steps',
              'parallel.impl', 'seg.log_every_steps', 'seg.checkpoint_every_steps',
              'seg.max_to_keep', 'seg.min_labelled_fraction')
# The data keys that decide which images and labels a run sees and how they are drawn (the
# segmentation run does not read the classifier's augmentation settings).
_DATA_SOURCE = ('data.name', 'data.num_classes', 'data.train_split', 'data.val_split',
                'data.label_list', 'data.msrc_labels', 'data.skip_bad', 'data.deterministic',
                'data.normalization', 'data.synthetic.', 'data.loader')
# Keys of eval_seg, which its own manifest.json already checks (predictions of other settings
# are replaced), and so are not part of train_seg's record; `seg.oracle` is in the record's name.
_SEG_EVAL = ('seg.eval_scales', 'seg.eval_flip', 'seg.eval_batch_size', 'seg.crf', 'seg.oracle')

# record -> the records whose outputs it reads.
UPSTREAM = {'check_data': (), 'train_cls': (), 'export_cams': ('train_cls',), 'pseudo_labels': ('export_cams',),
            'eval_cams': ('export_cams', 'pseudo_labels'), 'train_seg': ('pseudo_labels',),
            'eval_seg': ('train_seg',), 'train_seg_oracle': (),
            'eval_seg_oracle': ('train_seg_oracle',)}
RECORDS = tuple(UPSTREAM)


@contextlib.contextmanager
def lock(workdir: str, process_index: int = 0):
  """Holds `<workdir>/.lock` (`.lock.<i>` for process i > 0 of a multi-process job) for the
  block; UserError naming the workdir and the holder when another run has it."""
  name = LOCK_FILE if process_index == 0 else f'{LOCK_FILE}.{process_index}'
  path = os.path.join(workdir, name)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 512, 0).decode('utf-8', 'replace').strip() or 'another process'
      raise UserError(f'workdir {os.path.abspath(workdir)} is in use by {holder} (lock {path}); '
                      'wait for that run to end, or use another --workdir') from None
    except OSError as e:  # a file system without locks (some FUSE mounts): run unprotected
      print(f'warning: cannot lock {path} ({e.strerror}); make sure no other run uses this '
            'workdir', file=sys.stderr, flush=True)
    os.ftruncate(fd, 0)
    os.pwrite(fd, (f'pid {os.getpid()} on {socket.gethostname()} since '
                   f'{time.strftime("%Y-%m-%d %H:%M:%S %Z")}\n').encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the lock


def record_name(stage: str, config) -> str:
  if stage in ('train_seg', 'eval_seg') and config.seg.oracle:
    return f'{stage}_oracle'
  return stage


def _flat(config) -> dict:
  out = {}

  def walk(node, prefix):
    for key, value in node.items():
      if hasattr(value, 'items'):
        walk(value, f'{prefix}{key}.')
      else:
        out[prefix + key] = json.loads(json.dumps(value, default=str))
  walk(config.to_dict(), '')
  return out


def _select(flat: dict, patterns) -> list:
  """Keys equal to a pattern, or under it when the pattern ends with '.'."""
  return [k for k in flat
          if any(k == p or (p.endswith('.') and k.startswith(p)) for p in patterns)]


def depends_on(record: str, config) -> dict:
  """{key: value} of the config keys that the outputs of `record` depend on (beyond those of the
  records it reads from, which are checked on their own)."""
  flat = _flat(config)
  if record == 'train_cls':
    keys = [k for k in _select(flat, ('data.', 'model.', 'train.', 'seed'))
            if k != 'data.saliency_dir']  # read by pseudo_labels only
    if config.cams.method == 'oaa':  # the OAA store is written during training
      keys += ['cams.prob_threshold', 'cams.oaa_members', 'cams.oaa_first_epoch',
               'cams.oaa_fill_last_epoch', 'cams.oaa_all_readouts', 'cams.oaa_rounds']
      if not config.cams.oaa_all_readouts:  # the store holds this readout only
        keys.append('cams.source')
  elif record == 'export_cams':
    keys = ['cams.method', 'cams.source', 'cams.save_png']
    if config.cams.method == 'group_inference':
      keys += ['cams.scales', 'cams.flip']
  elif record == 'pseudo_labels':
    keys = ['cams.crf', 'data.saliency_dir', 'pseudo.cam_norm']
    keys += (['pseudo.conflict_threshold', 'pseudo.saliency_bg_threshold',
              'pseudo.fg_ignore_threshold', 'pseudo.min_fg_fraction']
             if config.data.saliency_dir else ['cams.bg_threshold'])
  elif record in ('train_seg', 'train_seg_oracle'):
    keys = [k for k in _select(flat, _DATA_SOURCE + ('seg.', 'seed'))
            if k not in _SEG_EVAL]
  else:  # eval_cams recomputes everything on each run; eval_seg checks its own manifest.json
    keys = []
  return {k: flat[k] for k in sorted(keys) if k not in _LOCATIONS + _NO_EFFECT}


def record_path(workdir: str, record: str) -> str:
  return os.path.join(workdir, RECORD_DIR, record + '.json')


def _from_config_json(workdir: str, record: str):
  """A workdir from before stage records: the keys of `record` in the config.json of its last
  run, where `record` has outputs; else None."""
  path = os.path.join(workdir, 'config.json')
  if not any(os.path.exists(p) for p in outputs(workdir, record)) or not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return depends_on(record, ml_collections.ConfigDict(json.load(f)))
  except (OSError, ValueError, AttributeError, KeyError, TypeError):
    return None  # not a config this code can read: nothing to compare with


def read_record(workdir: str, record: str):
  """The recorded {key: value} of `record`, or None when it has none."""
  path = record_path(workdir, record)
  if not os.path.exists(path):
    return _from_config_json(workdir, record)
  try:
    with open(path) as f:
      return json.load(f)['config']
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError(f'unreadable stage record {path}: {e}; delete it if the outputs of '
                    f'{record} were made with this config, else rerun with --discard_from='
                    f'{record.replace("_oracle", "")}') from None


def write_record(workdir: str, record: str, config) -> None:
  gio.atomic_write_text(record_path(workdir, record), json.dumps(
      {'config': depends_on(record, config)}, indent=1, sort_keys=True) + '\n')


def involved(records) -> list:
  """`records` and every record they read from, directly or not, in pipeline order."""
  seen, todo = set(), list(records)
  while todo:
    r = todo.pop()
    if r not in seen:
      seen.add(r)
      todo.extend(UPSTREAM[r])
  return [r for r in RECORDS if r in seen]


def downstream(record: str) -> list:
  """`record` and every record that reads its outputs, directly or not, in pipeline order."""
  return [r for r in RECORDS if record in involved([r])]


def _show(value) -> str:
  return json.dumps(value)


def check(workdir: str, config, records) -> None:
  """UserError naming the changed keys (old and new values) when the recorded config of one of
  `records`, or of a record they read from, differs from `config`."""
  for record in involved(records):
    old = read_record(workdir, record)
    if old is None:
      continue
    old = config_lib.current_names(old)  # recorded before keys were renamed (config.RENAMED)
    new = depends_on(record, config)
    changed = [k for k in sorted(set(old) & set(new)) if old[k] != new[k]]
    if changed:
      stage = record.replace('_oracle', '')
      later = [r for r in downstream(record) if r != record]
      diff = ', '.join(f'{k}={_show(new[k])} (was {_show(old[k])})' for k in changed)
      raise UserError(
          f'{workdir} holds outputs of {record} made with another config: {diff}; use another '
          f'--workdir, or --discard_from={stage} to delete the outputs of {record}'
          + (f' and of {", ".join(later)}' if later else '') + ' and make them again')


def outputs(workdir: str, record: str) -> list:
  """The files and folders of `record` in `workdir` (existing or not)."""
  from gwsss_jax.cams import export  # pylint: disable=g-import-not-at-top
  from gwsss_jax.cams import oaa  # pylint: disable=g-import-not-at-top
  from gwsss_jax.seg import common  # pylint: disable=g-import-not-at-top
  from gwsss_jax.cams import pseudo  # pylint: disable=g-import-not-at-top
  from gwsss_jax.train import artifact  # pylint: disable=g-import-not-at-top
  join = lambda *p: os.path.join(workdir, *p)
  if record == 'check_data':  # reads only
    return []
  if record == 'train_cls':
    return [artifact.classifier_dir(workdir), oaa.store_dir(workdir),
            join('tensorboard', 'train_cls')]
  if record == 'export_cams':
    return [export.cam_dir(workdir), export.png_dir(workdir)]
  if record == 'pseudo_labels':
    return [pseudo.label_dir(workdir)]
  if record == 'eval_cams':
    return [join('vis')]
  names = common.run_names(record.endswith('_oracle'))
  if record.startswith('train_seg'):
    return [join(names.checkpoints), join('tensorboard', names.train)]
  return [join(names.predictions), join(names.results),
          join(names.iou_table)]


def discard_from(workdir: str, stage: str, config) -> list:
  """Deletes the outputs, metrics and records of `stage` (its oracle run with seg.oracle=True)
  and of every stage that reads them; returns the records discarded. The record goes last, so
  that a discard cut short is refused again rather than mixed with a new run."""
  if stage not in config_lib.STAGES:
    raise UserError(f'--discard_from={stage}: not a stage; choose from '
                    f'{", ".join(config_lib.STAGES)}')
  gone = downstream(record_name(stage, config))
  for record in gone:
    for path in outputs(workdir, record) + [gio.stage_metrics_path(workdir, record)]:
      if os.path.isdir(path):
        shutil.rmtree(path)
      elif os.path.exists(path):
        os.remove(path)
    if os.path.exists(record_path(workdir, record)):
      os.remove(record_path(workdir, record))
  return gone


def clean_stale_tmp(workdir: str, record: str = '') -> int:
  """Removes the temporary files of unfinished atomic writes (left by a killed run; only one
  run holds the workdir) in the outputs of `record`, or with '' in the driver's own files
  (config.json, metrics, stage records). Returns how many."""
  if not record:
    return sum(gio.remove_stale_tmp(path, recursive=False) for path in (
        workdir, os.path.join(workdir, gio.STAGE_METRICS_DIR), os.path.join(workdir, RECORD_DIR)))
  removed = 0
  for path in outputs(workdir, record):
    if os.path.isdir(path):
      removed += gio.remove_stale_tmp(path)
  return removed
