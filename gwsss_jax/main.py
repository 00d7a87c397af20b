"""Runs the pipeline: `python -m gwsss_jax.main --config=configs/voc.py --workdir=DIR`.

Intentionally thin: flags, config, dispatch to `gwsss_jax.pipeline.run`.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from gwsss_jax.common import blas

blas.limit_threads()  # before anything imports NumPy (gwsss_jax/common/blas.py says why)

# pylint: disable=g-import-not-at-top,wrong-import-position
from gwsss_jax import config as config_lib
from gwsss_jax.common import cli
from gwsss_jax.common import console
from gwsss_jax.common import xla_flags
# pylint: enable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, CAMs, labels and metrics.')
flags.DEFINE_bool('jax_distributed', False,
                  'Call jax.distributed.initialize() (multi-host TPU/GPU jobs).')
flags.DEFINE_enum('discard_from', None, list(config_lib.STAGES),
                  'Delete the outputs of this stage and of the stages that read them before the '
                  'run (to make them again after a change of the config keys they depend on).')
flags.DEFINE_bool('verbose', False,
                  "Show the INFO logs of JAX, orbax, clu and TensorFlow (otherwise only gwsss_jax's "
                  'own lines and warnings reach the console; TensorBoard receives every metric).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  console.configure(FLAGS.verbose)
  config_lib.validate(FLAGS.config)  # before JAX is imported: a bad value fails at once
  xla_flags.configure_cpu()  # before JAX starts: convolutions off YNNPACK (docs/benchmarks.md)
  from gwsss_jax import pipeline  # pylint: disable=g-import-not-at-top
  pipeline.run(FLAGS.config, FLAGS.workdir, distributed=FLAGS.jax_distributed,
               discard_from=FLAGS.discard_from or '')


if __name__ == '__main__':
  cli.run(main, flags_parser=cli.parse_config_flags)
