"""The device check's measurements, each run in a child process of its own
(benchmarks/device_check.py starts them with a time limit): the start-up of a run,
the paper model's training step (EIW against vanilla, bfloat16 against float32),
the step under XLA's full autotuning, and 1 against 2 devices. Each returns a
JSON-able dict; none needs a network or a dataset (random 8-bit images).
"""
from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import sys
import time

import jax
import numpy as np

from benchmarks import bench_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(spec: str, batch: int):
  """`spec` is 'configs/cifar10.py' (the paper's model), optionally ':variant', or
  'tiny' (an 8x8 Glow of one step per scale, for a CPU smoke run)."""
  if spec == 'tiny':
    from eiw_jax.train.config import base_config  # pylint: disable=g-import-not-at-top
    from eiw_jax.train.recipes import smoke  # pylint: disable=g-import-not-at-top
    cfg = smoke(base_config(name='synthetic', image_size=8, channels=1, batch_size=batch,
                            train_steps=4, num_scales=2, num_steps=1))
  else:
    path, _, arg = spec.partition(':')
    module_spec = importlib.util.spec_from_file_location('device_config', os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    cfg = module.get_config(arg or None)
  cfg.data.batch_size = batch
  return cfg


def _device_peak_bytes():
  """The device's peak bytes in use so far in this process (None where the backend
  keeps no such count, e.g. CPU)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


def startup(spec: str, batch: int) -> dict:
  """From nothing to the end of the first training step of the EIW model, in this
  fresh process (the compilation cache is whatever the caller pointed JAX at)."""
  result = bench_lib.first_step(load_config(spec, batch))
  return dict(result, device_peak_bytes=_device_peak_bytes())


def _timed(step, state, batch, steps: int):
  """(state, seconds per step) over `steps` steps, synchronised at both ends."""
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  return state, (time.perf_counter() - t0) / steps


def paper(spec: str, batch: int, rounds: int, steps: int) -> dict:
  """EIW (float32), vanilla (float32) and EIW with bfloat16 conditioners: their
  programs compiled side by side in threads, a first step each (EIW's initial state
  for both EIW variants), then `rounds` interleaved rounds of `steps` steps each.
  The losses of the two precisions are compared on one state, the float32 EIW's
  after its steps (at init the couplings are the identity, so the conditioners'
  precision does not show in the loss yet)."""
  from eiw_jax.train.trainer import Trainer  # pylint: disable=g-import-not-at-top
  cfg = load_config(spec, batch)
  variants = {'eiw': dict(shuffle=True), 'vanilla': dict(shuffle=False),
              'eiw_bf16': dict(shuffle=True, compute_dtype='bfloat16')}
  trainers = {n: Trainer(bench_lib.variant(cfg, **m)) for n, m in variants.items()}
  images = bench_lib._random_batch(trainers['eiw'])  # pylint: disable=protected-access
  key = jax.random.key(0)
  t0 = time.perf_counter()
  programs = {f'init/{n}': trainers[n]._init.lower(key, images)  # pylint: disable=protected-access
              for n in ('eiw', 'vanilla')}
  for n, t in trainers.items():
    programs[f'step/{n}'] = t._lower_step(t.abstract_state())[1]  # pylint: disable=protected-access
  with concurrent.futures.ThreadPoolExecutor(len(programs)) as pool:
    compiled = dict(zip(programs, pool.map(lambda p: p.compile(), programs.values())))
  compile_wall_s = time.perf_counter() - t0
  init = {n: jax.block_until_ready(compiled[f'init/{n}'](key, images)) for n in ('eiw', 'vanilla')}
  init['eiw_bf16'] = init['eiw']
  out = dict(batch=batch, compile_wall_s=compile_wall_s, rounds=rounds, steps_per_round=steps)
  states, times = {}, {n: [] for n in variants}
  for n in variants:
    step = compiled[f'step/{n}']
    state = jax.tree.map(lambda x: x.copy(), init[n])
    state, metrics = step(state, images)
    states[n] = state
    out[n] = dict(first_loss=float(metrics['loss']), peak_memory_bytes=bench_lib.peak_memory(step),
                  params=sum(x.size for x in jax.tree.leaves(init[n].params)))
  for r in range(rounds):
    for n in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
      states[n], seconds = _timed(compiled[f'step/{n}'], states[n], images, steps)
      times[n].append(seconds)
  for n in variants:
    step_s = float(np.median(times[n]))
    out[n].update(step_s=step_s, images_per_s=batch / step_s, round_step_s=times[n])
  for n in ('eiw', 'eiw_bf16'):  # one more step of each from the same trained state
    state = jax.tree.map(lambda x: x.copy(), states['eiw'])
    out[n]['trained_loss'] = float(compiled[f'step/{n}'](state, images)[1]['loss'])
  out['eiw_step_time_over_vanilla'] = out['eiw']['step_s'] / out['vanilla']['step_s']
  out['bf16_speedup'] = out['eiw']['step_s'] / out['eiw_bf16']['step_s']
  out['bf16_loss_minus_float32'] = out['eiw_bf16']['trained_loss'] - out['eiw']['trained_loss']
  out['trained_steps'] = 1 + rounds * steps
  out['device_peak_bytes'] = _device_peak_bytes()
  return out


def autotune(spec: str, batch: int, steps: int) -> dict:
  """The EIW model's start-up and step under XLA's default autotuning (no
  autotune flag of the device check's), from an empty cache."""
  from eiw_jax.train.trainer import Trainer  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  trainer = Trainer(load_config(spec, batch))
  images = bench_lib._random_batch(trainer)  # pylint: disable=protected-access
  state = trainer.init(jax.random.key(0), images)
  step = trainer.compile_step(state)
  state, _ = _timed(step, state, images, 1)
  first_step_s = time.perf_counter() - t0
  _, step_s = _timed(step, state, images, steps)
  return dict(first_step_s=first_step_s, step_s=step_s, images_per_s=batch / step_s,
              xla_flags=os.environ.get('XLA_FLAGS', ''))


def two_devices() -> dict:
  """The test suite's smoke run (tests/train/test_step.py) on 1 and on 2 of this
  machine's devices: init, losses and parameters within the suite's tolerances."""
  sys.path[:0] = [os.path.join(ROOT, 'tests'), os.path.join(ROOT, 'tests', 'train')]
  import test_step  # pylint: disable=g-import-not-at-top
  one = test_step.run_steps(devices=jax.devices()[:1])[2]
  two = test_step.run_steps(devices=jax.devices()[:2])[2]
  try:
    test_step.assert_agree(one, {f'2/{k}': v for k, v in two.items()}, 2)
  except AssertionError as e:
    return dict(status='failed', reason=' '.join(str(e).split())[:500])
  return dict(status='ok', compared=len(two))
