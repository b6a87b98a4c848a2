"""The jitted training step: the same init, losses and parameters on 1, 2, 4 and 8
(simulated CPU) devices, and a non-finite step changes nothing but the counters.

Tolerances, per quantity (as README states them): init 1e-5, losses 1e-6 relative,
parameters 1e-5, except where a gradient coordinate of the first step is at float
rounding level (|g| < 1e-5): Adamax's first update is lr * g / (|g| + 1e-8), about
lr * sign(g), and the order of the batch mean over devices decides that sign, so
those coordinates may differ by up to 2 * lr per step."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from eiw_jax import api, data
from eiw_jax import train as train_lib
from eiw_jax.train.sharding import DATA_AXIS

from helpers import ARGS, ROOT, smoke_config

NUM_STEPS = 3
FOUR_DEVICES = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
                    JAX_PLATFORMS='cpu')
EIGHT_DEVICES = dict(FOUR_DEVICES, XLA_FLAGS='--xla_force_host_platform_device_count=8')
COUNTS = (2, 4, 8)


def run_steps(num_steps=NUM_STEPS, devices=None):
  """(trainer, state, flat results) of init + `num_steps` steps over `devices` (all local)."""
  config = smoke_config()
  trainer = train_lib.Trainer(config, devices=devices)
  devices = devices or jax.devices()
  it = trainer.batches(data.load_split(config.data, 'train'), 0)
  batches = [trainer.global_batch(next(it)) for _ in range(num_steps)]
  n = len(devices)
  batch = batches[0]  # the global batch is split into n row blocks, one per device
  assert batch.sharding.spec == P(DATA_AXIS) and batch.shape[0] == config.data.batch_size
  assert sorted(s.device.id for s in batch.addressable_shards) == sorted(d.id for d in devices)
  assert {s.data.shape[0] for s in batch.addressable_shards} == {config.data.batch_size // n}
  state = trainer._init(jax.random.key(config.train.seed), batch)
  out = {f'init/{i}': np.asarray(x) for i, x in enumerate(jax.tree.leaves(state.params))}
  if n == 1:  # the first step's gradient, as train_step computes it
    rng = jax.random.fold_in(state.rng, state.step)
    grads = jax.jit(jax.grad(lambda p: api.loss(
        trainer.model, {'params': p, 'consts': state.consts}, batch, rng)[0]))(state.params)
    out.update({f'grad/{i}': np.asarray(x) for i, x in enumerate(jax.tree.leaves(grads))})
  for s, b in enumerate(batches):
    state, metrics = trainer._step(state, b)
    out[f'loss/{s}'] = np.asarray(metrics['loss'])
  out.update({f'params/{i}': np.asarray(x) for i, x in enumerate(jax.tree.leaves(state.params))})
  return trainer, state, out


def dump(path):
  """Entry point of the 8-device subprocess: runs on the first 2, 4 and 8 devices."""
  assert len(jax.devices()) == 8, jax.devices()
  results = {}
  for n in COUNTS:
    results.update({f'{n}/{k}': v for k, v in run_steps(devices=jax.devices()[:n])[2].items()})
  np.savez(path, **results)


@pytest.fixture(scope='module')
def many_devices(tmp_path_factory):
  """Starts the multi-device runs; the 1-device run compiles meanwhile."""
  path = tmp_path_factory.mktemp('devices') / 'many.npz'
  code = (f'import sys; sys.path[:0] = ["tests", "tests/train"]; import test_step; '
          f'test_step.dump({str(path)!r})')
  proc = subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, env=EIGHT_DEVICES,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  yield lambda: (proc.communicate(timeout=600)[0], proc.returncode, path)
  proc.kill()


@pytest.fixture(scope='module')
def one_device(many_devices):
  del many_devices  # started first
  assert len(jax.devices()) == 1
  return run_steps()


def assert_agree(one, many, n):
  """The results of `run_steps` on 1 device (`one`) and on n (`many`, keys 'n/...')
  agree within the tolerances of the module docstring. Also the device check's
  comparison of 1 and 2 real devices (benchmarks/device_phases.py)."""
  lr = smoke_config().optim.lr
  assert {k.split('/', 1)[1] for k in many if k.startswith(f'{n}/')} == {
      k for k in one if not k.startswith('grad/')}
  for key in sorted(k for k in one if not k.startswith(('grad/', 'params/'))):
    tol = dict(rtol=1e-6) if key.startswith('loss') else dict(atol=1e-5)
    np.testing.assert_allclose(many[f'{n}/{key}'], one[key], **tol, err_msg=f'{n}: {key}')
  for key in sorted(k for k in one if k.startswith('params/')):
    diff = np.abs(many[f'{n}/{key}'] - one[key])
    rounding = np.abs(one[key.replace('params', 'grad')]) < 1e-5
    assert diff[~rounding].max(initial=0) <= 1e-5, (n, key, diff[~rounding].max())
    assert diff.max(initial=0) <= 2 * lr * NUM_STEPS + 1e-5, (n, key, diff.max())


def test_1_2_4_8_devices_agree(many_devices, one_device):
  output, returncode, path = many_devices()
  assert returncode == 0, output
  many, one = dict(np.load(path)), one_device[2]
  for n in COUNTS:
    assert_agree(one, many, n)


def test_batch_not_divisible_by_devices_is_one_line_exit_2(tmp_path):
  workdir = tmp_path / 'w'
  proc = subprocess.run([sys.executable, 'train.py', *ARGS, f'--workdir={workdir}',
                         '--config.data.batch_size=6'], cwd=ROOT, env=FOUR_DEVICES,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error: ')]
  assert errors == ['error: data.batch_size=6 is not divisible by the 4 devices (1 hosts); '
                    'set --config.data.batch_size to a multiple of 4'], proc.stderr
  assert not workdir.exists()


def test_nonfinite_step_changes_nothing_but_counters(one_device):
  trainer, state, _ = one_device
  config = trainer.config
  it = trainer.batches(data.load_split(config.data, 'train'), int(state.step))
  good = state.consts
  nan = jax.device_put(jax.tree.map(lambda c: jnp.full_like(c, jnp.nan), good), trainer.replicated)
  state = state.replace(consts=nan)  # every loss and gradient is NaN
  before = jax.device_get((state.params, state.opt_state, jax.random.key_data(state.rng)))
  for i in range(1, 4):
    state, metrics = trainer._step(state, trainer.global_batch(next(it)))
    counters = [int(metrics[k]) for k in ('nonfinite', 'nonfinite_streak', 'nonfinite_total')]
    assert counters == [1, i, i] and not np.isfinite(float(metrics['loss']))
    after = jax.device_get((state.params, state.opt_state, jax.random.key_data(state.rng)))
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bitwise unchanged
  assert int(state.step) == NUM_STEPS + 3  # the data moves on
  state, metrics = trainer._step(state.replace(consts=good), trainer.global_batch(next(it)))
  assert [int(metrics[k]) for k in ('nonfinite', 'nonfinite_streak', 'nonfinite_total')] == [0, 0, 3]
  changed = jax.tree.leaves(jax.device_get(state.params))
  assert any(not np.array_equal(a, b) for a, b in zip(changed, jax.tree.leaves(before[0])))
