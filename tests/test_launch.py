"""The launch scripts of launch/: the multi-node GPU script runs the real pipeline as two JAX
processes on this machine and matches one process on as many devices; its SLURM path and the
Cloud TPU script are run against stand-ins for srun/scontrol and gcloud that record (or run)
what they are given."""

import json
import os
import shlex
import socket
import stat
import subprocess
import sys

import pytest
import jax
import numpy as np

from demo_config import demo_config
from gwsss_jax.train import artifact

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU = os.path.join(ROOT, 'launch', 'gpu_multinode.sh')
SWEEP = os.path.join(ROOT, 'launch', 'sweep_slurm.sh')
TPU = os.path.join(ROOT, 'launch', 'tpu_vm.sh')
OVERRIDES = {
    'data.synthetic.num_train': 24, 'data.synthetic.num_val': 8, 'data.synthetic.size': 48,
    'data.crop_size': 32, 'data.resize': 40, 'model.width': 0.0625, 'model.node_dim': 16,
    'train.batch_size': 4, 'train.num_epochs': 1, 'train.log_every_steps': 2,
    'train.checkpoint_every_steps': 3, 'cams.num_vis': 2,
    'stages': 'train_cls,export_cams,pseudo_labels,eval_cams',
}


def _flags(data_root):
  return ([f'--config={ROOT}/configs/demo.py']
          + [f'--config.{k}={v}' for k, v in OVERRIDES.items()]
          + [f'--config.data.root={data_root}'])


def _env(devices, **extra):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu',
             PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get('PYTHONPATH')) if p))
  for key in ('SLURM_JOB_ID', 'SLURM_PROCID', 'SLURM_STEP_ID', 'MASTER_ADDR', 'RANK'):
    env.pop(key, None)
  env.update(extra)
  return env


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _executable(path, text):
  with open(path, 'w') as f:
    f.write(text)
  os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
  return str(path)


@pytest.mark.slow
def test_gpu_script_two_processes_match_one_process(tmp_path):
  # 2 processes x 2 CPU devices through launch/gpu_multinode.sh (torchrun-style environment)
  # against 1 process x 4 devices: the same global batches, so the same parameters, CAMs and
  # metrics; every process takes part in every stage and they wait for each other in between.
  data_root = str(tmp_path / 'data')
  multi, single = str(tmp_path / 'multi'), str(tmp_path / 'single')
  port = _free_port()
  procs, logs = [], []
  for rank in range(2):
    log = open(tmp_path / f'rank{rank}.log', 'w')  # pylint: disable=consider-using-with
    logs.append(log)
    env = _env(2, MASTER_ADDR='localhost', MASTER_PORT=str(port), WORLD_SIZE='2',
               RANK=str(rank), PYTHON=sys.executable)
    procs.append(subprocess.Popen(['bash', GPU, f'--workdir={multi}'] + _flags(data_root),
                                  stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT))
  try:
    codes = [p.wait(timeout=480) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
    for log in logs:
      log.close()
  outputs = [(tmp_path / f'rank{r}.log').read_text() for r in range(2)]
  assert codes == [0, 0], '\n'.join(o[-3000:] for o in outputs)
  assert 'process 1 of 2, coordinator localhost:' in outputs[1]
  assert '| classification mAP (held-out) |' in outputs[0]
  assert '| classification mAP' not in outputs[1]          # only process 0 reports
  assert '[eval_cams] done' in outputs[1]

  run = subprocess.run([sys.executable, '-m', 'gwsss_jax.main', f'--workdir={single}']
                       + _flags(data_root), env=_env(4), cwd=ROOT, capture_output=True,
                       text=True, timeout=480, check=False)
  assert run.returncode == 0, run.stderr[-3000:]

  with open(os.path.join(multi, 'metrics.json')) as f:
    got = json.load(f)
  with open(os.path.join(single, 'metrics.json')) as f:
    want = json.load(f)
  for key in ('train_cls/mAP', 'eval_cams/cam_miou', 'eval_cams/pseudo_label_miou',
              'eval_cams/pseudo_label_coverage', 'eval_cams/pseudo_label_images',
              'pseudo_labels/images', 'pseudo_labels/mean_coverage', 'export_cams/images'):
    np.testing.assert_allclose(got[key], want[key], rtol=1e-4, err_msg=key)
  assert got['train_cls/steps'] == want['train_cls/steps'] == 6
  assert sorted(os.listdir(os.path.join(multi, 'pseudo_labels'))) == sorted(
      os.listdir(os.path.join(single, 'pseudo_labels')))

  config = demo_config(OVERRIDES, data_root)
  _, p_multi, _ = artifact.load(artifact.classifier_dir(multi), config=config)
  _, p_single, _ = artifact.load(artifact.classifier_dir(single), config=config)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(p_multi), jax.tree.leaves(p_single)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def _recording_python(tmp_path):
  """A PYTHON that writes its JAX_* environment and arguments, one per line, to rank files."""
  return _executable(tmp_path / 'python', f"""#!/usr/bin/env bash
out={tmp_path}/run_$JAX_PROCESS_ID.txt
echo "$JAX_COORDINATOR_ADDRESS $JAX_NUM_PROCESSES $JAX_PROCESS_ID" > "$out"
printf '%s\\n' "$@" >> "$out"
""")


def test_gpu_script_maps_the_torchrun_environment(tmp_path):
  python = _recording_python(tmp_path)
  env = _env(1, MASTER_ADDR='node0', MASTER_PORT='2345', WORLD_SIZE='3', RANK='2', PYTHON=python)
  run = subprocess.run(['bash', GPU, '--config=configs/voc.py', '--workdir=/runs/a b'], env=env,
                       capture_output=True, text=True, check=False)
  assert run.returncode == 0, run.stderr
  lines = (tmp_path / 'run_2.txt').read_text().splitlines()
  assert lines == ['node0:2345 3 2', '-m', 'gwsss_jax.main', '--jax_distributed',
                   '--config=configs/voc.py', '--workdir=/runs/a b']
  missing = subprocess.run(['bash', GPU], env=_env(1, PYTHON=python), capture_output=True,
                           text=True, check=False)
  assert missing.returncode != 0 and 'MASTER_ADDR' in missing.stderr


def test_gpu_script_under_sbatch_starts_one_task_per_node_with_srun(tmp_path):
  # sbatch runs the script once; it re-runs itself through srun, whose tasks get SLURM_PROCID.
  python = _recording_python(tmp_path)
  bindir = tmp_path / 'bin'
  bindir.mkdir()
  _executable(bindir / 'srun', """#!/usr/bin/env bash
shift  # --ntasks-per-node=1
for id in 0 1; do SLURM_STEP_ID=0 SLURM_PROCID=$id SLURM_NTASKS=2 "$@" || exit 1; done
""")
  _executable(bindir / 'scontrol', """#!/usr/bin/env bash
[[ "$1 $2 $3" == "show hostnames gpu[07-08]" ]] && printf 'gpu07\\ngpu08\\n'
""")
  env = _env(1, SLURM_JOB_ID='77', SLURM_JOB_NODELIST='gpu[07-08]', SLURM_SUBMIT_DIR=ROOT,
             PYTHON=python, PATH=f'{bindir}{os.pathsep}{os.environ["PATH"]}')
  run = subprocess.run(['bash', GPU, '--config.train.batch_size=16'], env=env,
                       capture_output=True, text=True, check=False)
  assert run.returncode == 0, run.stderr
  for rank in (0, 1):
    lines = (tmp_path / f'run_{rank}.txt').read_text().splitlines()
    assert lines[0] == f'gpu07:12355 2 {rank}'
    assert lines[-2:] == ['--jax_distributed', '--config.train.batch_size=16']


def test_tpu_script_runs_the_same_command_on_every_worker(tmp_path):
  # A gcloud stand-in that records its arguments and, for `ssh --command=C`, runs C in a fake
  # home whose checkout has a recording .venv/bin/python: the arguments survive the quoting.
  home = tmp_path / 'home'
  venv = home / 'gwsss_jax' / '.venv' / 'bin'
  venv.mkdir(parents=True)
  _executable(venv / 'python', f"""#!/usr/bin/env bash
printf '%s\\n' "$@" > {tmp_path}/worker_args.txt
""")
  bindir = tmp_path / 'bin'
  bindir.mkdir()
  _executable(bindir / 'gcloud', f"""#!/usr/bin/env bash
printf '%s\\n' "$@" >> {tmp_path}/gcloud.txt
echo --- >> {tmp_path}/gcloud.txt
for a in "$@"; do
  case "$a" in
    --command=*) HOME={home} bash -c "${{a#--command=}}" ;;
  esac
done
if [[ "$4" == scp ]]; then cp "$5" {tmp_path}/copied.tar.gz; fi
""")
  env = _env(1, PATH=f'{bindir}{os.pathsep}{os.environ["PATH"]}', TPU_NAME='slice',
             ZONE='europe-west4-a', TPU_TYPE='v5p-16', HOME=str(home))
  args = ['--config=configs/voc.py', '--config.data.root=/mnt/shared/VOC 2012',
          "--config.model.name=it's"]
  for command in (['create'], ['run'] + args, ['delete']):
    run = subprocess.run(['bash', TPU] + command, env=env, capture_output=True, text=True,
                         check=False)
    assert run.returncode == 0, run.stderr
  calls = [c.strip().splitlines() for c in (tmp_path / 'gcloud.txt').read_text().split('---')
           if c.strip()]
  assert calls[0][:5] == ['compute', 'tpus', 'tpu-vm', 'create', 'slice']
  assert '--accelerator-type=v5p-16' in calls[0] and '--zone=europe-west4-a' in calls[0]
  assert calls[1][:5] == ['compute', 'tpus', 'tpu-vm', 'ssh', 'slice'] and '--worker=all' in calls[1]
  assert calls[2][:5] == ['compute', 'tpus', 'tpu-vm', 'delete', 'slice']
  worker_args = (tmp_path / 'worker_args.txt').read_text().splitlines()
  assert worker_args == ['-m', 'gwsss_jax.main', '--jax_distributed'] + args
  assert subprocess.run(['bash', TPU, 'nonsense'], env=env, capture_output=True,
                        check=False).returncode == 2


def test_tpu_setup_ships_the_checkout_without_venv_git_or_runs(tmp_path):
  bindir = tmp_path / 'bin'
  bindir.mkdir()
  _executable(bindir / 'gcloud', f"""#!/usr/bin/env bash
printf '%s\\n' "$@" >> {tmp_path}/gcloud.txt
if [[ "$4" == scp ]]; then cp "$5" {tmp_path}/copied.tar.gz; fi
""")
  env = _env(1, PATH=f'{bindir}{os.pathsep}{os.environ["PATH"]}')
  run = subprocess.run(['bash', TPU, 'setup'], env=env, capture_output=True, text=True,
                       check=False)
  assert run.returncode == 0, run.stderr
  names = subprocess.run(['tar', '-tzf', str(tmp_path / 'copied.tar.gz')], capture_output=True,
                         text=True, check=True).stdout.splitlines()
  assert './gwsss_jax/pipeline.py' in names and './requirements.txt' in names
  assert not [n for n in names if n.startswith(('./.venv/', './.git/', './runs/'))]
  recorded = (tmp_path / 'gcloud.txt').read_text()
  assert "pip install -q -U 'jax[tpu]==0.10.2'" in recorded and '--worker=all' in recorded


def test_sweep_array_task_runs_its_line_of_the_printed_commands(tmp_path):
  printed = subprocess.run(
      [sys.executable, '-m', 'gwsss_jax.sweep', '--config=configs/demo.py',
       '--sweep=configs/sweeps/table3.py', f'--workdir={tmp_path}/runs', '--print_commands',
       '--set=data.root=/data/my VOC'], cwd=ROOT, env=_env(1), capture_output=True, text=True,
      check=True).stdout
  commands = tmp_path / 'commands.txt'
  commands.write_text(printed)
  lines = printed.splitlines()
  recorder = _executable(tmp_path / 'python', f"""#!/usr/bin/env bash
printf '%s\\n' "$@" > {tmp_path}/task_args.txt
""")
  for task in (3, len(lines) - 1):
    env = _env(1, SLURM_ARRAY_TASK_ID=str(task), SLURM_SUBMIT_DIR=ROOT, PYTHON=recorder)
    run = subprocess.run(['bash', SWEEP, str(commands)], env=env, capture_output=True, text=True,
                         check=False)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / 'task_args.txt').read_text().splitlines() == shlex.split(lines[task])[1:]
  assert '--only=cam_ensemble' in lines[-1]
  env = _env(1, SLURM_ARRAY_TASK_ID=str(len(lines)), SLURM_SUBMIT_DIR=ROOT)
  run = subprocess.run(['bash', SWEEP, str(commands)], env=env, capture_output=True, text=True,
                       check=False)
  assert run.returncode == 2 and f'no line {len(lines) + 1}' in run.stderr
