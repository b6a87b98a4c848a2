"""Benchmarks: the EIW model and the vanilla model of one config, side by side in one
process (bench.py). Reports per model: training images/s, compile time, sampling
images/s, peak memory and FLOPs of the training step (XLA's own analyses), and
the achieved FLOP/s; optionally the step time at several simulated device counts
and the peak memory of invertible backprop against ordinary autodiff.

Timings interleave the two models round by round, so drift in the machine's speed
hits both alike; the overhead is reported as a ratio of medians.

Start-up and memory are measured per model in a fresh process each (`cold_start`):
the seconds to build and initialise the model, to compile the step, from the
start to the end of the first step, and the process's peak resident memory; once
with an empty compilation cache, once more with the cache the first run filled.
"""
from __future__ import annotations

import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from eiw_jax import api
from eiw_jax.train.trainer import Trainer


def variant(config, **model):
  cfg = copy.deepcopy(config)
  with cfg.unlocked():
    cfg.model.update(model)
  return cfg


def _random_batch(trainer):
  d = trainer.config.data
  rng = np.random.default_rng(0)
  local = rng.integers(0, 2**d.num_bits, (d.batch_size // jax.process_count(), d.image_size,
                                          d.image_size, d.channels), dtype=np.int32)
  return trainer.global_batch(local)


class _Model:
  """One model's compiled training step, its state and its sampler."""

  def __init__(self, config):
    t0 = time.perf_counter()
    self.trainer = Trainer(config)
    self.batch = _random_batch(self.trainer)
    self.state = self.trainer.init(jax.random.key(0), self.batch)
    self.init_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    self.step = self.trainer.compile_step(self.state)
    self.compile_s = time.perf_counter() - t0
    self.peak_memory_bytes = peak_memory(self.step)
    self.times = []

  def run(self, steps: int) -> None:
    jax.block_until_ready(self.state)
    t0 = time.perf_counter()
    for _ in range(steps):
      self.state, metrics = self.step(self.state, self.batch)
    jax.block_until_ready(metrics)
    self.times.append((time.perf_counter() - t0) / steps)

  def sample_images_per_s(self, n: int, iters: int) -> float:
    model, variables = self.trainer.model, self.state.variables()
    fn = self.trainer.jit(lambda v, k: api.sample(model, v, k, n, 1.0))
    jax.block_until_ready(fn(variables, jax.random.key(0)))
    t0 = time.perf_counter()
    for i in range(iters):
      out = fn(variables, jax.random.key(i + 1))
    jax.block_until_ready(out)
    return n * iters / (time.perf_counter() - t0)


def peak_memory(compiled) -> int:
  """Bytes live at once for a compiled step: arguments + outputs + temporaries - aliased.
  (XLA:CPU's own `peak_memory_in_bytes` leaves out the temporaries.)"""
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def flops_per_step(config) -> float:
  """XLA's FLOP count of one training step. XLA counts a loop body once whatever
  its trip count, so this compiles the unrolled (scan=False) form of the model."""
  trainer = Trainer(variant(config, scan=False))
  batch = _random_batch(trainer)
  state = jax.eval_shape(trainer._init, jax.random.key(0), batch)  # pylint: disable=protected-access
  compiled = trainer._step.lower(state, batch).compile()  # pylint: disable=protected-access
  return float(compiled.cost_analysis()['flops'])


def compare(config, *, names=('eiw', 'vanilla'), rounds: int = 5, steps: int = 5,
            sample_iters: int = 3, peak_flops: float = 0.0, count_flops: bool = True,
            sample: bool = True, log=print) -> dict:
  """EIW vs vanilla for one config (see the module docstring)."""
  models = {n: _Model(variant(config, shuffle=n == 'eiw')) for n in names}
  for m in models.values():
    m.run(1)  # warm up
    m.times.clear()
  for r in range(rounds):
    for name in (names if r % 2 == 0 else names[::-1]):
      models[name].run(steps)
    log(f'round {r + 1}/{rounds}: ' + ', '.join(
        f'{n} {m.times[-1] * 1e3:.1f} ms/step' for n, m in models.items()))
  batch = config.data.batch_size
  result = {}
  for name, m in models.items():
    step_s = float(np.median(m.times))
    flops = flops_per_step(m.trainer.config) if count_flops else float('nan')
    result[name] = dict(
        train_images_per_s=batch / step_s, step_s=step_s, compile_s=m.compile_s,
        in_process_init_s=m.init_s,
        sample_images_per_s=(m.sample_images_per_s(batch, sample_iters) if sample
                             else float('nan')),
        peak_memory_bytes=m.peak_memory_bytes, flops_per_step=flops,
        achieved_flops_per_s=flops / step_s,
        params=sum(x.size for x in jax.tree.leaves(m.state.params)))
    if peak_flops:
      result[name]['fraction_of_peak'] = flops / step_s / peak_flops
  if len(models) == 2:
    ratios = np.asarray(models['eiw'].times) / np.asarray(models['vanilla'].times)
    result['eiw_step_time_over_vanilla'] = float(np.median(ratios))
  return result


def first_step(config) -> dict:
  """In this process, from nothing to the end of one training step of `config`, as
  train.py starts:
  init_s (build and initialise), compile_s (the step), first_step_s (all of it,
  the step's run included) and peak_rss_bytes (this process so far)."""
  t0 = time.perf_counter()
  trainer = Trainer(config)
  batch = _random_batch(trainer)
  state = trainer.init(jax.random.key(0), batch)
  t1 = time.perf_counter()
  step = trainer.compile_step(state)
  t2 = time.perf_counter()
  jax.block_until_ready(step(state, batch))
  t3 = time.perf_counter()
  return dict(init_s=t1 - t0, compile_s=t2 - t1, first_step_s=t3 - t0,
              peak_rss_bytes=peak_rss_bytes())


def peak_rss_bytes() -> int:
  """This process's peak resident memory: VmHWM on Linux, which starts afresh at
  exec (ru_maxrss does not: a child started by a large process reports the
  parent's peak), else ru_maxrss (KiB on Linux, bytes on macOS)."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return rss if sys.platform == 'darwin' else rss * 1024


def cold_start(argv_base, names) -> dict:
  """`first_step` per model in a fresh process: cold (an empty compilation cache),
  then again with the cache that run filled ('cached_' keys)."""
  out = {}
  for name in names:
    with tempfile.TemporaryDirectory() as cache:
      out[name] = {}
      for prefix in ('', 'cached_'):
        path = os.path.join(cache, 'result.json')
        cmd = [sys.executable, *argv_base, f'--only={name}', '--first_step_only',
               f'--compilation_cache={cache}', f'--json={path}']
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        with open(path) as f:
          out[name].update({prefix + k: v for k, v in json.load(f)[name].items()})
  return out


def _step_memory(config) -> int:
  """`peak_memory` of `config`'s training step, compiled only (nothing allocated)."""
  trainer = Trainer(config)
  batch = _random_batch(trainer)
  state = jax.eval_shape(trainer._init, jax.random.key(0), batch)  # pylint: disable=protected-access
  return peak_memory(trainer._step.lower(state, batch).compile())  # pylint: disable=protected-access


def invertible_memory(config, depths=(6, 24)) -> dict:
  """Peak memory of the training step at each depth N, ordinary vs invertible backprop."""
  out = {}
  for mode, inv in (('autodiff', False), ('invertible', True)):
    for n in depths:
      out[f'{mode}_N{n}'] = _step_memory(variant(config, num_steps=n, invertible_grad=inv,
                                                 scan=True))
    out[f'{mode}_ratio'] = out[f'{mode}_N{depths[-1]}'] / out[f'{mode}_N{depths[0]}']
  return out


def invertible_memory_by_batch(config, batches=(8, 16, 32)) -> dict:
  """Peak memory of the training step at each batch size, ordinary vs invertible
  backprop (the memory curve of a model whose depth is fixed, e.g. DenseFlow)."""
  out = {}
  for mode, inv in (('autodiff', False), ('invertible', True)):
    for b in batches:
      cfg = variant(config, invertible_grad=inv)
      with cfg.unlocked():
        cfg.data.batch_size = b
      out[f'{mode}_B{b}'] = _step_memory(cfg)
  return out


def device_scaling(argv_base, counts) -> dict:
  """Step time of the EIW model at each simulated device count (one subprocess each)."""
  out = {}
  for n in counts:
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={n}')
    path = f'/tmp/eiw_bench_devices_{n}_{os.getpid()}.json'
    cmd = [sys.executable, *argv_base, '--only=eiw', '--noflops', '--nocold', f'--json={path}']
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    with open(path) as f:
      out[str(n)] = json.load(f)['eiw']['step_s']
    os.remove(path)
  return out
