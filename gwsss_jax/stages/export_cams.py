"""Stage `export_cams`: per-image CAM files (IRNet's format) for the pseudo labels.

`cams.method='oaa'` reads the maps that train_cls accumulated (online attention accumulation,
the paper's method) and writes the readout `cams.source` (and all three for eval_cams when
train_cls accumulated them, `cams.oaa_all_readouts`); `'group_inference'` runs the trained
network on groups of the training split with `cams.scales` and `cams.flip` and writes the readout
`cams.source` (and all three readouts for eval_cams). See `gwsss_jax.cams.export`.
"""

import jax

from gwsss_jax.cams import export
from gwsss_jax.data import datasets
from gwsss_jax.data import input_pipeline
from gwsss_jax.train import artifact


def settings(config) -> dict:
  """What the exported files depend on (recorded in cams/export.json)."""
  k = config.cams
  out = {'method': k.method, 'source': k.source, 'train_split': config.data.train_split}
  if k.method == 'group_inference':
    out.update(scales=list(k.scales), flip=bool(k.flip), num_nodes=config.model.num_nodes,
               crop_size=input_pipeline.input_size(config), seed=config.seed)
  return out


def run(config, workdir: str) -> dict:
  k = config.cams
  dataset = datasets.load_split(config, config.data.train_split)
  if jax.process_index() == 0:
    export.check_manifest(workdir, settings(config))
  if k.method == 'oaa':
    if jax.process_index() != 0:
      return {}
    return export.export_oaa(workdir, dataset, k.save_png, k.source)
  model, variables, record = artifact.load(artifact.classifier_dir(workdir), artifact.CLASSIFIER,
                                           config)
  return export.export_group_inference(config, workdir, dataset, model, variables,
                                       record['normalization'])
