"""Smoke mode of the CPU benchmarks (`versus_torch`, `conv_ops`, `pool_ops`): GWSSS_BENCH_SMOKE=1.

The documented commands must be proven to run, but their figures mean something only at full
size on a quiet machine, which a test cannot have. With GWSSS_BENCH_SMOKE=1 (set by
tests/test_docs.py, which runs the commands exactly as docs/benchmarks.md gives them) each
benchmark runs its code paths at its smallest sizes, one timed round or repetition without
warm-up, and prints its lines in their normal format; its figures then say nothing about speed.
"""

import os
import sys

ENV = 'GWSSS_BENCH_SMOKE'


def enabled() -> bool:
  """Whether GWSSS_BENCH_SMOKE=1; on a CPU, also compiles without XLA's backend optimisations
  (tiny programs compiled once: the optimisations cost more than they save)."""
  if os.environ.get(ENV) != '1':
    return False
  from gwsss_jax.common import xla_flags  # pylint: disable=g-import-not-at-top
  xla_flags.configure_quick_cpu()
  print(f'# {ENV}=1: smallest sizes, one round, no warm-up; the figures say nothing about speed',
        file=sys.stderr, flush=True)
  return True
