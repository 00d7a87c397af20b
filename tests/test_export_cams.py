"""CAM files: IRNet's format, OAA export with resume, group inference against a plain loop."""

import functools
import os

import cv2
import jax
import numpy as np
import pytest
import torch
from PIL import Image

from gwsss_jax import config as config_lib
from gwsss_jax.cams import export
from gwsss_jax.cams import oaa
from gwsss_jax.common.errors import UserError
from gwsss_jax.data import core
from gwsss_jax.data import normalization as norm_lib
from gwsss_jax.data import sampler
from gwsss_jax.models import classifier
from gwsss_jax.models import convert
from random_weights import he_normal

NORM = convert.normalization_spec('imagenet_rgb')


def _torch_resize(maps, hw):
  """IRNet's resize: F.interpolate(bilinear, align_corners=False)."""
  t = torch.from_numpy(np.asarray(maps, np.float32))[None]
  return torch.nn.functional.interpolate(t, size=tuple(hw), mode='bilinear',
                                         align_corners=False)[0].numpy()


def _irnet_eval_labels(path, threshold):
  """IRNet step/eval_cam.py's reading of a CAM file (independent of gwsss_jax)."""
  cam_dict = np.load(path, allow_pickle=True).item()
  cams = cam_dict['high_res']
  cams = np.pad(cams, ((1, 0), (0, 0), (0, 0)), mode='constant', constant_values=threshold)
  keys = np.pad(cam_dict['keys'] + 1, (1, 0), mode='constant')
  return keys[np.argmax(cams, axis=0)]


def _irnet_normalize(maps):
  """IRNet's `cam /= F.adaptive_max_pool2d(cam, (1, 1)) + 1e-5`."""
  return maps / (maps.reshape(len(maps), -1).max(1)[:, None, None] + 1e-5)


def test_record_is_irnet_readable(tmp_path):
  rng = np.random.default_rng(0)
  low = rng.random((2, 4, 5)).astype(np.float32) * 3.0
  rec = export.make_record([3, 14], {'ensemble': low}, (13, 17), 'ensemble', 'oaa')
  path = str(tmp_path / 'a.npy')
  export.save_record(path, rec)
  loaded = np.load(path, allow_pickle=True).item()
  np.testing.assert_array_equal(loaded['keys'], [3, 14])
  assert loaded['cam'].shape == (2, 4, 5) and loaded['high_res'].shape == (2, 13, 17)
  assert loaded['high_res'].dtype == np.float32
  cam = _irnet_normalize(low)
  np.testing.assert_allclose(loaded['cam'], cam, rtol=1e-6)
  np.testing.assert_allclose(loaded['high_res'], _irnet_normalize(_torch_resize(cam, (13, 17))),
                             atol=1e-6)
  # IRNet's eval: background channel padded in front, keys + 1 -> VOC labels 0, 4, 15.
  labels = _irnet_eval_labels(path, 0.5)
  assert set(np.unique(labels)) <= {0, 4, 15}
  hr = loaded['high_res']
  expected = np.where(hr.max(0) > 0.5, np.array([4, 15])[hr.argmax(0)], 0)
  np.testing.assert_array_equal(labels, expected)


def _dataset(tmp_path, labels, sizes):
  rng = np.random.default_rng(0)
  examples = []
  for i, (row, (h, w)) in enumerate(zip(labels, sizes)):
    path = str(tmp_path / 'images' / f'im{i}.png')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    examples.append(core.Example(f'im{i}', path, None, tuple(np.flatnonzero(row))))
  return core.Dataset(examples, tuple(f'c{c}' for c in range(labels.shape[1])), 'train')


def test_oaa_export_and_resume(tmp_path, capsys):
  labels = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]], bool)
  ds = _dataset(tmp_path, labels, [(20, 30), (16, 16), (24, 12)])
  workdir = str(tmp_path / 'run')
  store = oaa.OAAStore.open(workdir, labels, (4, 4), process_index=0)
  rng = np.random.default_rng(1)
  cams = rng.random((3, 4, 4, 3)).astype(np.float32)
  store.update([0, 1, 2], cams, np.ones((3, 3)), 0.1, False)
  store.update([2], cams[:1], np.array([[1.0, 0.0, 0.0]]), 0.1, False)  # class 1 skipped
  store.flush()
  out = export.export_oaa(workdir, ds, save_png=True)
  assert out['export_cams/images'] == 3 and out['export_cams/missing_maps'] == 0
  rec = export.load_record(export.cam_path(workdir, 'im2'))
  np.testing.assert_array_equal(rec['keys'], [0, 1])
  stored = np.rint(np.maximum(cams[2], cams[0] * [1, 0, 0]) * 255) / 255  # max over updates
  want = stored[..., [0, 1]].transpose(2, 0, 1)
  np.testing.assert_allclose(rec['cam'], _irnet_normalize(want), atol=1e-6)
  assert rec['high_res'].shape == (2, 24, 12)
  assert os.path.exists(os.path.join(export.png_dir(workdir), 'im0_2.png'))
  # Resume: finished files are skipped, a deleted one is rewritten.
  os.remove(export.cam_path(workdir, 'im1'))
  before = os.stat(export.cam_path(workdir, 'im0')).st_mtime_ns
  out = export.export_oaa(workdir, ds, save_png=False)
  assert out == {'export_cams/images': 3, 'export_cams/missing_maps': 0}
  assert '1 CAM files written' in capsys.readouterr().out
  assert os.stat(export.cam_path(workdir, 'im0')).st_mtime_ns == before
  assert os.path.exists(export.cam_path(workdir, 'im1'))


def test_oaa_readouts_of_one_run_give_the_default_row(tmp_path):
  """Table 3's readout rows from one store: the ensemble row of a three-readout store is the
  ensemble-only store's export bitwise, and each readout equals a store of that readout alone."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  labels = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], bool)
  ds = _dataset(tmp_path, labels, [(20, 30), (16, 16), (24, 12), (9, 14)])
  policy = ml_collections.ConfigDict({'prob_threshold': 0.1, 'oaa_members': 'all',
                                      'oaa_first_epoch': 0, 'oaa_fill_last_epoch': True})
  stores = {name: oaa.OAAStore.open(str(tmp_path / name), labels, (4, 4), process_index=0,
                                    readouts=readouts)
            for name, readouts in (('all', export.READOUTS), ('ensemble', ('ensemble',)),
                                   ('graph', ('graph',)))}
  rng = np.random.default_rng(3)
  for epoch in range(2):
    for _ in range(3):
      index = np.stack([rng.choice(4, 2, replace=False) for _ in range(2)])  # [b=2, K=2]
      out = {'cam_graph': jnp.asarray(rng.normal(size=(2, 2, 4, 4, 3)), jnp.float32),
             'cam_mid': jnp.asarray(rng.normal(size=(2, 2, 4, 4, 3)), jnp.float32)}
      cams = {r: np.asarray(classifier.cams_for_export(out, labels[index], r))
              for r in export.READOUTS}
      probs = rng.random((2, 2, 3)) * 0.3
      for store in stores.values():
        oaa.accumulate_groups(store, policy, epoch, 1, index,
                              {r: cams[r] for r in store.readouts}, probs)
  for store in stores.values():
    store.flush()
  for name, source in (('all', 'ensemble'), ('all', 'graph'), ('ensemble', 'ensemble'),
                       ('graph', 'graph')):
    export.export_oaa(str(tmp_path / name), ds, save_png=False, source=source)
    os.rename(export.cam_dir(str(tmp_path / name)), str(tmp_path / f'{name}_{source}_cams'))
  load = lambda d, n: np.load(str(tmp_path / d / f'{n}.npy'), allow_pickle=True).item()
  for n in ('im0', 'im1', 'im2', 'im3'):
    for source in ('ensemble', 'graph'):
      got, want = load(f'all_{source}_cams', n), load(f'{source}_{source}_cams', n)
      assert got['source'] == source and got['method'] == 'oaa'
      np.testing.assert_array_equal(got['cam'], want['cam'])
      np.testing.assert_array_equal(got['high_res'], want['high_res'])
      np.testing.assert_array_equal(got[f'cam_{source}'], want['cam'])
    assert not np.array_equal(load('all_ensemble_cams', n)['cam_graph'],
                              load('all_ensemble_cams', n)['cam_intermediate'])
  with pytest.raises(UserError, match='oaa_all_readouts'):
    export.export_oaa(str(tmp_path / 'graph'), ds, save_png=False, source='intermediate')


def test_missing_maps_count_the_whole_store_after_a_resume(tmp_path, capsys):
  """A resumed or repeated export reports the figures of an uninterrupted one (issue 18.7)."""
  labels = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0]], bool)
  ds = _dataset(tmp_path, labels, [(20, 30), (16, 16), (24, 12)])
  workdir = str(tmp_path / 'run')
  store = oaa.OAAStore.open(workdir, labels, (4, 4), process_index=0)
  cams = np.random.default_rng(2).random((3, 4, 4, 3)).astype(np.float32)
  probs = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])  # im1/c1, im2/c1 skipped
  store.update([0, 1, 2], cams, probs, 0.1, False)
  store.flush()
  whole = export.export_oaa(workdir, ds, save_png=False)
  assert whole == {'export_cams/images': 3, 'export_cams/missing_maps': 2}
  assert export.export_oaa(workdir, ds, save_png=False) == whole  # a plain rerun
  os.remove(export.cam_path(workdir, 'im0'))  # an interrupted export, resumed
  assert export.export_oaa(workdir, ds, save_png=False) == whole
  assert '1 CAM files written' in capsys.readouterr().out.splitlines()[-1]


def _tiny_config():
  c = config_lib.base_config()
  c.model.width = 0.0625
  c.model.node_dim = 8
  c.model.num_nodes = 2
  c.model.graph_steps = 1
  c.data.crop_size = 32
  c.cams.scales = (1.0, 0.5)
  c.cams.flip = True
  c.cams.batch_size = 1
  c.cams.source = 'graph'
  return c


def _random_variables(model, k, seed=0):
  """He-normal weights of the classifier's shapes (`random_weights.he_normal`)."""
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          np.zeros((1, k, 32, 32, 3), np.float32), np.ones((1, k, k), np.float32))
  return he_normal(shapes, np.random.default_rng(seed))


def test_group_inference_matches_a_plain_loop(tmp_path, capsys):
  config = _tiny_config()
  labels = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1]], bool)
  ds = _dataset(tmp_path, labels, [(20, 30), (32, 32), (40, 24), (16, 20), (30, 30)])
  model = classifier.build_classifier(config.model, 3)
  k = config.model.num_nodes
  variables = _random_variables(model, k)
  workdir = str(tmp_path / 'run')
  out = export.export_group_inference(config, workdir, ds, model, variables, NORM)
  assert out['export_cams/images'] == 5

  # Reference: every group containing the image, at each scale and flip, one at a time.
  groups, adjacency = sampler.make_groups(labels, k, config.seed, 0, config.train.group_rule)
  images = [np.asarray(Image.open(ex.image_path).convert('RGB')) for ex in ds.examples]
  apply = jax.jit(lambda v, x, a: model.apply(v, x, a, train=False)[1])
  sums = {i: {'graph': 0.0, 'intermediate': 0.0, 'ensemble': 0.0} for i in range(5)}
  counts = np.zeros(5)
  for g, members in enumerate(groups):
    per_pass = []
    for side in (32, 16):
      x = np.stack([cv2.resize(images[i], (side, side), interpolation=cv2.INTER_LINEAR)
                    for i in members])
      x = norm_lib.normalize(x, NORM)[None]
      for flip in (False, True):
        o = apply(variables, x[:, :, :, ::-1] if flip else x, adjacency[g:g + 1])
        gr, mid = np.asarray(o['cam_graph'])[0], np.asarray(o['cam_mid'])[0]  # [K, h, w, L]
        maps = {'graph': gr, 'intermediate': mid, 'ensemble': (gr + mid) / 2}
        for r, m in maps.items():
          m = np.maximum(m, 0)
          m = np.stack([_torch_resize(mm.transpose(2, 0, 1), (4, 4)) for mm in m])
          per_pass.append((r, m[..., ::-1] if flip else m))  # [K, L, 4, 4]
    for node, i in enumerate(members):
      counts[i] += 1
      for r, m in per_pass:
        sums[i][r] = sums[i][r] + m[node] / 4
  for i, ex in enumerate(ds.examples):
    rec = np.load(export.cam_path(workdir, ex.name), allow_pickle=True).item()
    keys = np.flatnonzero(labels[i])
    np.testing.assert_array_equal(rec['keys'], keys)
    assert rec['source'] == 'graph' and rec['method'] == 'group_inference'
    for r in ('graph', 'intermediate', 'ensemble'):
      want = _irnet_normalize(sums[i][r][keys] / counts[i])
      np.testing.assert_allclose(rec[f'cam_{r}'], want, rtol=1e-4, atol=1e-5,
                                 err_msg=f'{ex.name} {r}')
    np.testing.assert_allclose(rec['cam'], rec['cam_graph'])
    assert rec['high_res'].shape == (len(keys),) + images[i].shape[:2]

  # Resume: only the groups of the missing image run again; the others are left alone.
  os.remove(export.cam_path(workdir, 'im3'))
  before = os.stat(export.cam_path(workdir, 'im0')).st_mtime_ns
  capsys.readouterr()
  out = export.export_group_inference(config, workdir, ds, model, variables, NORM)
  assert out == {'export_cams/images': 5}
  assert '1 CAM files written' in capsys.readouterr().out
  assert os.stat(export.cam_path(workdir, 'im0')).st_mtime_ns == before
  rec = np.load(export.cam_path(workdir, 'im3'), allow_pickle=True).item()
  want = _irnet_normalize(sums[3]['graph'][[2]] / counts[3])
  np.testing.assert_allclose(rec['cam'], want, rtol=1e-4, atol=1e-5)


def test_classifier_record_gives_back_the_trained_network(tmp_path):
  """train_cls's record (`artifact`): the module rebuilt from it and the parameters read without
  the optimizer state; a config of another network, or a workdir without the record, is refused
  by name."""
  from gwsss_jax.train import artifact  # pylint: disable=g-import-not-at-top
  from gwsss_jax.train import checkpoint  # pylint: disable=g-import-not-at-top
  from gwsss_jax.train import optim  # pylint: disable=g-import-not-at-top
  from gwsss_jax.train import trainer  # pylint: disable=g-import-not-at-top
  config = _tiny_config()
  config.data.num_classes = 3
  model = classifier.build_classifier(config.model, 3)
  variables = _random_variables(model, config.model.num_nodes)
  directory = artifact.classifier_dir(str(tmp_path))
  with pytest.raises(UserError, match='missing cls_model.json.*train_cls'):
    artifact.load(directory, artifact.CLASSIFIER)
  tx, _ = optim.classifier_optimizer(config.train, variables['params'], {}, True, 10)
  ckpt = checkpoint.Checkpointer(directory, asynchronous=False)
  ckpt.save(7, trainer.init_state(variables['params'], {}, tx, 0), force=True)
  ckpt.close()
  artifact.save(directory, artifact.classifier_record(config, NORM))

  module, got, record = artifact.load(directory, config=config)
  assert repr(module) == repr(model) and record['step'] == 7
  assert record['normalization'] == {k: list(v) if isinstance(v, tuple) else v
                                     for k, v in NORM.items()}
  assert set(got) == {'params'}  # no BatchNorm in the VGG classifier
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got['params']),
                          jax.tree.leaves(variables['params'])):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
  config.model.node_dim = 16
  with pytest.raises(UserError, match=r'config.model.node_dim=16.*trained with 8'):
    artifact.load(directory, config=config)


def test_classifier_record_of_an_older_version_loads_under_the_new_names(tmp_path):
  """A record written before the renames (model.num_steps, model.drop_rate as the release's
  drop probability) reads under today's keys; one without a key of the network is refused by
  name, not with a traceback."""
  from gwsss_jax.train import artifact  # pylint: disable=g-import-not-at-top
  config = _tiny_config()
  config.model.variant = 'release'
  config.model.num_nodes = 3
  record = artifact.classifier_record(config, NORM)
  old = dict(record['model'])
  old['num_steps'] = old.pop('graph_steps')
  old['drop_rate'] = 0.8  # the release's --drop_rate: importance map with probability 0.2
  del old['importance_prob']
  # added later: the graph such records were trained with
  for key in ('self_edge', 'edge_mask', 'message_fusion', 'extra_conv_init', 'drop_output'):
    del old[key]
  directory = tmp_path / 'cls'
  directory.mkdir()
  artifact.save(str(directory), dict(record, model=old))
  got = artifact.read(str(directory), artifact.CLASSIFIER)['model']
  assert got['graph_steps'] == config.model.graph_steps and 'num_steps' not in got
  assert got['importance_prob'] == pytest.approx(0.2) and 'drop_rate' not in got
  assert got['self_edge'] is True and got['edge_mask'] == 'labels'
  assert got['message_fusion'] == 'sum' and got['extra_conv_init'] == 'he'
  assert got['drop_output'] == 'eq11'
  assert set(got) == set(record['model'])
  del old['reduction']
  artifact.save(str(directory), dict(record, model=old))
  with pytest.raises(UserError, match=r'cls_model.json: the record lacks model.reduction'):
    artifact.read(str(directory), artifact.CLASSIFIER)
