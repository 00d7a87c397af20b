"""Stage `check_data`: the data check (`gwsss_jax.data.check`) alone, for every stage of the
pipeline: `--config.stages=check_data`. Other runs make the same check, for their own stages,
before their first stage."""

from gwsss_jax import config as config_lib
from gwsss_jax.data import check


def run(config, workdir: str) -> dict:
  del workdir
  return check.check(config, config_lib.STAGES)
