"""Runs the pipeline: `python -m gwsss_jax.main --config=configs/voc.py --workdir=DIR`.

Intentionally thin: flags, config, dispatch to `gwsss_jax.pipeline.run`.
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from gwsss_jax.common.errors import UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, CAMs, labels and metrics.')
flags.DEFINE_bool('jax_distributed', False,
                  'Call jax.distributed.initialize() (multi-host TPU/GPU jobs).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  from gwsss_jax import pipeline  # pylint: disable=g-import-not-at-top
  pipeline.run(FLAGS.config, FLAGS.workdir, distributed=FLAGS.jax_distributed)


def _run():
  try:
    app.run(main)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  _run()
