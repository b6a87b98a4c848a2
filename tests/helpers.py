"""Shared test utilities: random non-identity parameters, brute-force log-dets, what a
compiled CPU program calls, and the smoke runs of the training runtime's tests (their
config, subprocess runs of train.py and eval.py, what a workdir holds)."""
import functools
import hashlib
import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np

from eiw_jax import train as train_lib
from eiw_jax.train.checkpoint import Checkpointer


def perturb(variables, key, scale=0.2):
  """Adds Gaussian noise to every float parameter (not to 'consts'): non-identity layers."""
  if 'params' not in variables:
    return variables
  params = variables['params']
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  leaves = [l + scale * jax.random.normal(k, l.shape, l.dtype) for l, k in zip(leaves, keys)]
  return {**variables, 'params': jax.tree.unflatten(treedef, leaves)}


def brute_force_logdet(fn, x):
  """log|det J| of fn at a single example x (batch axis 1), by autodiff on the flat input.

  Forward mode (jax.jacfwd), as distrax tests its bijectors: every layer must
  support it (reverse mode is what training exercises).
  """
  shape = x.shape

  def flat_fn(v):
    return fn(v.reshape(shape)).reshape(-1)

  jac = jax.jacfwd(flat_fn)(x.reshape(-1))
  assert jac.shape[0] == jac.shape[1], f'non-square Jacobian {jac.shape}'
  sign, logdet = np.linalg.slogdet(np.asarray(jac, np.float64))
  assert sign != 0
  return logdet


def commit_orders(model, variables):
  """The variables after a refresh of the shuffler's order from the live Q (as
  training does every model.shuffle_refresh_every steps), so that a perturbed
  solver really permutes."""
  from eiw_jax import shuffle  # pylint: disable=g-import-not-at-top
  consts = variables.get('consts', {})
  flow = shuffle.commit_live_orders(model.flow, variables['params']['flow'], consts.get('flow', {}))
  return {**variables, 'consts': {**consts, 'flow': flow}}


def ynn_fusions(compiled) -> int:
  """How many YNNPACK fusions a compiled CPU program calls."""
  return compiled.as_text().count('%ynn_fusion')


# ----------------------------------------------------------- runs of the smoke config


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


NUM_STEPS = 10


ARGS = ('--config=configs/fashion_mnist.py:smoke', '--config.data.source=synthetic',
        f'--config.train.num_steps={NUM_STEPS}', '--config.train.checkpoint_every=1')


def smoke_config(**train):
  """The config that ARGS give train.py, with `train` overrides."""
  spec = importlib.util.spec_from_file_location('fm', os.path.join(ROOT, 'configs/fashion_mnist.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config('smoke')
  cfg.data.source = 'synthetic'
  cfg.train.update(num_steps=NUM_STEPS, checkpoint_every=1)
  cfg.train.update(train)
  return cfg


def run_script(env, *args):
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)


def one_error(stderr):
  lines = [l for l in stderr.splitlines() if l.startswith('error: ')]
  assert len(lines) == 1 and 'Traceback' not in stderr, stderr
  return lines[0]


def committed(workdir):
  d = os.path.join(workdir, 'checkpoints')
  names = os.listdir(d) if os.path.isdir(d) else []
  return sorted(int(n) for n in names
                if n.isdigit() and os.path.exists(os.path.join(d, n, 'commit_success.txt')))


def snapshot(workdir):
  out = {}
  for dirpath, dirnames, filenames in os.walk(workdir):
    for name in dirnames + filenames:
      path = os.path.join(dirpath, name)
      out[os.path.relpath(path, workdir)] = (
          f'-> {os.readlink(path)}' if os.path.islink(path) else None if os.path.isdir(path)
          else hashlib.sha256(open(path, 'rb').read()).hexdigest())
  return out


def saved_params(workdir, step=None):
  """Checkpointed (params, opt_state) of `step` (default: the newest) as numpy."""
  trainer = train_lib.Trainer(smoke_config())
  with Checkpointer(workdir, max_to_keep=None) as ckpt:
    state, _ = ckpt.restore(trainer.abstract_state(), step=step or ckpt.latest_step())
  return jax.device_get((state.params, state.opt_state))


def assert_bitwise(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def metrics_of(workdir):
  records = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  for r in records:
    del r['images_per_s'], r['input_wait_fraction']  # timings
    if 'sample_grid' in r:
      r['sample_grid'] = os.path.relpath(r['sample_grid'], workdir)
  return records


def corrupt(step_dir):
  """Truncates every array file of a checkpoint to half its size."""
  for dirpath, _, filenames in os.walk(os.path.join(step_dir, 'default')):
    for name in filenames:
      if os.sep + 'd' in dirpath:
        path = os.path.join(dirpath, name)
        os.truncate(path, os.path.getsize(path) // 2)


RUN_STEPS = 2  # the shared short run (conftest.run)


def run_config_of(**changes):
  """The shared run's config; `changes` are dotted keys ('optim.lr')."""
  cfg = smoke_config(num_steps=RUN_STEPS)
  for key, value in changes.items():
    group, name = key.split('.')
    cfg[group][name] = value
  return cfg


def no_eval_hook(self, step, state):
  del self, step, state
  return {}


def restore_run(workdir, cfg, step=None, **kwargs):
  trainer = train_lib.Trainer(cfg)
  with Checkpointer(workdir, max_to_keep=None, **kwargs) as ckpt:
    return ckpt.restore(trainer.abstract_state(), step=step,
                        adapters=trainer.restore_adapters())


# --------------------------------------------- real file systems: full, read-only


def _mount(*args):
  return subprocess.run(['mount', *args], capture_output=True, text=True).returncode == 0


@functools.lru_cache(maxsize=1)
def can_mount():
  """Whether this process may mount (root, and a kernel that lets it): the tests of
  full and read-only disks then use real ones, and skip otherwise."""
  import tempfile  # pylint: disable=g-import-not-at-top
  if os.geteuid() != 0:
    return False
  probe = tempfile.mkdtemp()
  ok = _mount('-t', 'tmpfs', '-o', 'size=4k', 'tmpfs', probe)
  if ok:
    subprocess.run(['umount', probe], check=True)
  os.rmdir(probe)
  return ok


def needs_mount(test):
  import pytest  # pylint: disable=g-import-not-at-top
  return pytest.mark.skipif(not can_mount(), reason='needs root to mount a tmpfs')(test)


class Tmpfs:
  """A tmpfs mounted at `path` (made if missing) until `close`."""

  def __init__(self, path, size='1m', inodes=None):
    self.path = str(path)
    os.makedirs(self.path, exist_ok=True)
    options = f'size={size}' + (f',nr_inodes={inodes}' if inodes else '')
    assert _mount('-t', 'tmpfs', '-o', options, 'tmpfs', self.path)

  def fill(self):
    """Fills it to the last byte (a file 'filler')."""
    fd = os.open(os.path.join(self.path, 'filler'), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
      while os.write(fd, b'\0' * 4096):
        pass
    except OSError:
      pass
    finally:
      os.close(fd)

  def resize(self, size):
    assert _mount('-o', f'remount,size={size}', self.path)

  def close(self):
    subprocess.run(['umount', '-l', self.path], check=False)


class ReadOnlyView:
  """`source` seen read-only at `path` (a bind mount) until `close`."""

  def __init__(self, source, path):
    self.path = str(path)
    os.makedirs(self.path, exist_ok=True)
    assert _mount('--bind', str(source), self.path)
    assert _mount('-o', 'remount,bind,ro', self.path)

  def close(self):
    subprocess.run(['umount', '-l', self.path], check=False)
