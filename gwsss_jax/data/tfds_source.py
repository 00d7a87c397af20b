"""tensorflow-datasets as a source: the `voc/2012` and `coco/2014` builders, already prepared.

Nothing is ever downloaded: the builder must have been prepared into `data.tfds_data_dir`
(`tfds build voc/2012 --data_dir=...`). Both builders are detection datasets: they give images
and image-level labels (the classifier's stages), not segmentation masks (`mask_path` is None).
A split is materialised once into a VOC-layout directory (JPEG bytes as stored, a
`<split>_cls.txt` label list, `class_names.txt`), read back from its label list:
`data.cache_dir/tfds_<builder>/` or `<tfds_data_dir>/gwsss_cache/<builder>/`.
"""

import os

from absl import logging

from gwsss_jax.common import io as gio
from gwsss_jax.common.errors import UserError
from gwsss_jax.data import core

# The class names of `coco/2014`, whose builder names its labels by number.
COCO_CLASSES = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat',
    'traffic light', 'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog',
    'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella',
    'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard', 'sports ball', 'kite',
    'baseball bat', 'baseball glove', 'skateboard', 'surfboard', 'tennis racket', 'bottle',
    'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple', 'sandwich', 'orange',
    'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch', 'potted plant',
    'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'keyboard', 'cell phone',
    'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors',
    'teddy bear', 'hair drier', 'toothbrush')

BUILDERS = {'tfds_voc': 'voc/2012', 'tfds_coco': 'coco/2014'}
# The configs' split names -> the builders'.
SPLITS = {'train': 'train', 'val': 'validation', 'train2014': 'train', 'val2014': 'validation',
          'test': 'test'}


def cache_root(data_config, builder_name: str) -> str:
  tag = 'tfds_' + builder_name.replace('/', '_')
  if data_config.cache_dir:
    return os.path.join(data_config.cache_dir, tag)
  return os.path.join(data_config.tfds_data_dir, 'gwsss_cache', tag)


def materialise(records, out_dir: str, split: str, class_names) -> int:
  """Writes records {'name', 'image' (encoded bytes), 'labels'} as a VOC-layout split.

  Atomic per file; the list files are written last, so an interrupted run leaves no split.
  Returns the number of images.
  """
  image_dir = os.path.join(out_dir, 'JPEGImages')
  os.makedirs(image_dir, exist_ok=True)
  names, lines = [], []
  for rec in records:
    path = os.path.join(image_dir, rec['name'] + '.jpg')
    if not os.path.isfile(path):
      gio.atomic_write_bytes(path, rec['image'])
    labels = sorted({int(c) for c in rec['labels']})
    names.append(rec['name'])
    lines.append(' '.join([rec['name']] + [str(c) for c in labels]))
  if not names:
    raise UserError(f'tfds split {split!r} is empty')
  lists = os.path.join(out_dir, 'ImageSets', 'Segmentation')
  gio.atomic_write_text(os.path.join(out_dir, 'class_names.txt'), '\n'.join(class_names) + '\n')
  gio.atomic_write_text(os.path.join(lists, f'{split}_cls.txt'), '\n'.join(lines) + '\n')
  gio.atomic_write_text(os.path.join(lists, f'{split}.txt'), '\n'.join(names) + '\n')
  return len(names)


def _records(builder, tfds_split: str, coco_style: bool):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = builder.as_dataset(split=tfds_split, shuffle_files=False,
                          decoders={'image': tfds.decode.SkipDecoding()})
  for ex in tfds.as_numpy(ds):
    name = os.path.splitext(os.path.basename(ex['image/filename'].decode()))[0]
    labels = ex['objects']['label'] if coco_style else ex['labels']
    yield {'name': name, 'image': ex['image'], 'labels': labels}


def load(data_config, split: str) -> core.Dataset:
  """The examples of `split` of a prepared tfds builder (see the module docstring)."""
  if data_config.name not in BUILDERS:
    raise UserError(f'config.data.name={data_config.name!r}: not a tfds source '
                    f'({", ".join(BUILDERS)})')
  builder_name = BUILDERS[data_config.name]
  data_dir = data_config.tfds_data_dir
  if not data_dir:
    raise UserError(f'config.data.tfds_data_dir is empty: point it at the directory where '
                    f'`tfds build {builder_name}` prepared the data')
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(builder_name, data_dir=data_dir)
  if not builder.is_prepared():
    raise UserError(f'config.data.tfds_data_dir={data_dir!r}: {builder_name} is not prepared '
                    f'there (run `tfds build {builder_name} --data_dir={data_dir}`; gwsss_jax '
                    'never downloads)')
  tfds_split = SPLITS.get(split, split)
  if tfds_split not in builder.info.splits:
    raise UserError(f'split {split!r}: {builder_name} has splits '
                    f'{", ".join(sorted(builder.info.splits))}')
  coco_style = builder_name.startswith('coco')
  if coco_style:
    names = tuple(builder.info.features['objects']['label'].names)
    if all(n.isdigit() for n in names) and len(names) == len(COCO_CLASSES):
      names = COCO_CLASSES
  else:
    names = tuple(builder.info.features['labels'].feature.names)
  out_dir = cache_root(data_config, builder_name)
  if not os.path.isfile(os.path.join(out_dir, 'ImageSets', 'Segmentation', f'{split}.txt')):
    logging.info('materialising %s[%s] into %s', builder_name, tfds_split, out_dir)
    materialise(_records(builder, tfds_split, coco_style), out_dir, split, names)
  return read_back(data_config, out_dir, split, names)


def read_back(data_config, out_dir: str, split: str, names) -> core.Dataset:
  """The examples of a materialised split: its label list, each image checked."""
  if len(names) != data_config.num_classes:
    raise UserError(f'config.data.num_classes={data_config.num_classes} but the tfds builder '
                    f'has {len(names)} classes')
  bad = core.BadItems(data_config.skip_bad)
  label_file = os.path.join(out_dir, 'ImageSets', 'Segmentation', f'{split}_cls.txt')
  labels = core.read_label_list(label_file, data_config.num_classes, bad)
  examples = core.check_files([core.Example(name, os.path.join(out_dir, 'JPEGImages',
                                                               name + '.jpg'), None, classes)
                               for name, classes in labels.items()], bad)
  if not examples:
    raise UserError(f'{label_file}: no usable image in split {split!r}')
  return core.Dataset(examples, tuple(names), split, num_skipped=bad.count)
