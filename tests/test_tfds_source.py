"""The tfds source: the not-prepared error (never downloading); conversion on fake records."""

import io

import ml_collections
import numpy as np
from PIL import Image
import pytest

from gwsss_jax.common.errors import UserError
from gwsss_jax.data import tfds_source
from gwsss_jax.data import voc


def data_config(**kw):
  d = ml_collections.ConfigDict(dict(name='tfds_voc', root='', tfds_data_dir='', cache_dir='',
                                     num_classes=20, label_list='', train_split='train',
                                     skip_bad=False))
  d.update(kw)
  return d


def test_not_prepared_names_the_key(tmp_path):
  with pytest.raises(UserError, match='data.tfds_data_dir is empty'):
    tfds_source.load(data_config(), 'train')
  with pytest.raises(UserError, match='data.tfds_data_dir=.*not prepared'):
    tfds_source.load(data_config(tfds_data_dir=str(tmp_path)), 'train')
  with pytest.raises(UserError, match='data.tfds_data_dir=.*coco/2014 is not prepared'):
    tfds_source.load(data_config(name='tfds_coco', tfds_data_dir=str(tmp_path)), 'train2014')
  assert not any(tmp_path.iterdir())  # nothing downloaded or written


def test_materialise_fake_records_reads_back(tmp_path):
  rng = np.random.default_rng(0)
  records = []
  for i, labels in enumerate([[3, 3, 0], [19], [5, 1]]):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(buf, 'JPEG')
    records.append({'name': f'2008_{i:06d}', 'image': buf.getvalue(),
                    'labels': np.array(labels, np.int64)})
  out = str(tmp_path / 'cache')
  names = voc.class_names(str(tmp_path), 20)
  assert tfds_source.materialise(iter(records), out, 'train', names) == 3
  ds = tfds_source.read_back(data_config(), out, 'train', names)
  assert [ex.labels for ex in ds.examples] == [(0, 3), (19,), (1, 5)]
  assert ds.examples == voc.load(data_config(root=out), 'train').examples  # VOC's layout
  assert all(ex.mask_path is None for ex in ds.examples)
  with open(ds.examples[1].image_path, 'rb') as f:
    assert f.read() == records[1]['image']
