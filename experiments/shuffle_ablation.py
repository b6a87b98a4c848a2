"""The Shuffle ablation (issue 9): vanilla / random / kl / likelihood / oracle, seeds, a λ sweep.

    python experiments/shuffle_ablation.py --dataset=fashion_mnist --workdir=runs/ablation

Every run trains the same small Glow-backbone model on Fashion-MNIST (Debian's
package, offline) for the same number of steps, with the same data order and
initial flow weights for a given seed; only the Shuffle differs. Each run is
then evaluated on the full test set (bits/dim from one dequantisation draw and
the importance-weighted bound), by the entropy mode (R2E2 of the halves after
the Shuffle) and by how often its factored-out channel set changed.

Resumable: rerun the same command. A finished run keeps its result.json and is
skipped; an unfinished one resumes from its newest checkpoint. Several copies of
the command may run at once (say one per core, with --reverse on the second):
each run is locked by the process training it, and a killed process's lock goes
with it. After every run
docs/RESULTS.md and docs/shuffle_ablation.png are rewritten from all finished
runs (--report_only rewrites them without training).

With --backbone=ffjord every run trains the dataset's `:ffjord` continuous flow as
it is (λ = 1e-4 by default, Table 6's best for continuous flows), with one arm's
Shuffle; its tables go into their own block of docs/RESULTS.md and its plot into
docs/shuffle_ablation_cnf.png:

    python experiments/shuffle_ablation.py --backbone=ffjord --workdir=runs/ablation_cnf \
        --steps=500 --seeds=0,1 --arms=vanilla,random,likelihood --frozen_arms= --lambdas=
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import ablation_model, ablation_report

_DATASET = flags.DEFINE_string('dataset', 'fashion_mnist', 'configs/<dataset>.py to start from.')
_BACKBONE = flags.DEFINE_enum(
    'backbone', 'glow', ['glow', 'ffjord'],
    "glow: the shared small Glow model below; ffjord: the dataset's ':ffjord' continuous "
    'flow unchanged (its base λ is 1e-4, Table 6\'s best for continuous flows).')
_WORKDIR = flags.DEFINE_string('workdir', 'runs/ablation', 'One sub-directory per run.')
_STEPS = flags.DEFINE_integer('steps', 2000, 'Training steps per run.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds of every arm.')
_ARMS = flags.DEFINE_list('arms', ['vanilla', 'random', 'kl', 'likelihood', 'oracle'], 'Arms.')
_FROZEN = flags.DEFINE_list('frozen_arms', ['oracle'],
                            'Readings also run with their order frozen after --freeze_after steps.')
_FREEZE_AFTER = flags.DEFINE_integer('freeze_after', 200, 'optim.shuffle_freeze_after of those.')
_LAMBDAS = flags.DEFINE_list('lambdas', ['1e-1', '1e-2', '1e-4'],
                             'Extra λ for the best reading (the arms use the base λ).')
_SWEEP_SEEDS = flags.DEFINE_list('sweep_seeds', ['0', '1', '2'], 'Seeds of the λ sweep.')
_IW = flags.DEFINE_integer('iw_samples', 4, 'k of the importance-weighted test bound.')
_EVAL_EXAMPLES = flags.DEFINE_integer(
    'eval_examples', 0, 'Test images of the final evaluation (0: all); --backbone=ffjord only.')
_DOCS = flags.DEFINE_string('docs', 'docs', 'Where RESULTS.md and the plot go.')
_REPORT_ONLY = flags.DEFINE_bool('report_only', False, 'Only rewrite the report.')
_REVERSE = flags.DEFINE_bool('reverse', False, 'Take the runs from the end of the plan.')
_ADD_HALVES = flags.DEFINE_bool('add_halves', False,
                                'Add the halves\' statistics to finished runs that lack them.')

BASE_LAMBDA = {'glow': 1e-3, 'ffjord': 1e-4}
SOLVER_ARMS = ('kl', 'likelihood')
FROZEN = '_frozen'  # arm-name suffix: the reading with optim.shuffle_freeze_after set
DIVERGENCE = '_divergence'  # arm-name suffix: model.shuffle_statistic='divergence'


def base_lambda() -> float:
  return BASE_LAMBDA[_BACKBONE.value]


def ablation_config(dataset: str, arm: str, seed: int, steps: int, kl_weight: float):
  """The shared small model (the paper's fixed N(0, I) split prior) with one arm's Shuffle,
  or with --backbone=ffjord the dataset's continuous flow with that Shuffle."""
  # The settings of issue 9's runs (before issue 26's defaults): channels sorted in
  # each half, the 'nll' statistic unless '_divergence', the guider's width 4C // r.
  shuffle = dict(shuffle=arm != 'vanilla',
                 shuffle_mode='likelihood' if arm == 'vanilla' else arm.split('_')[0],
                 shuffle_statistic='divergence' if DIVERGENCE in arm else 'nll',
                 shuffle_halves='sorted', guider_min_width=1,
                 shuffle_seed=seed, kl_weight=kl_weight)
  freeze = _FREEZE_AFTER.value if FROZEN in arm else 0
  if _BACKBONE.value == 'ffjord':
    import importlib
    cfg = importlib.import_module(f'configs.{dataset}').get_config('ffjord')
    cfg.model.update(**shuffle)
    cfg.optim.shuffle_freeze_after = freeze
    cfg.train.update(num_steps=steps, seed=seed, log_every=25, eval_every=steps,
                     checkpoint_every=100, keep_checkpoints=2, eval_examples=500,
                     num_samples=16)
    cfg.eval.update(batch_size=500, num_examples=_EVAL_EXAMPLES.value,
                    iw_samples=_IW.value, entropy_examples=500)
    return cfg
  cfg = ablation_model.ablation_config(dataset, seed=seed, steps=steps, **shuffle)
  cfg.optim.shuffle_freeze_after = freeze
  cfg.eval.iw_samples = _IW.value
  return cfg


def run_name(arm: str, seed: int, kl_weight: float) -> str:
  base = math.isclose(kl_weight, base_lambda()) or arm not in SOLVER_ARMS
  lam = '' if base else f'_lam{kl_weight:g}'
  return f'{arm}{lam}_s{seed}'


def evaluate(config, workdir: str) -> dict:
  """Full-test-set bits/dim (+ IW bound), entropy, and the run's split changes."""
  import jax
  from eiw_jax import data, evaluation
  from eiw_jax.train import runs
  model, variables, step = runs.load_for_eval(config, workdir)
  if step != config.train.num_steps:  # training stopped early (SIGTERM saves and returns)
    sys.exit(f'{workdir} stopped at step {step}; rerun to resume')
  splits = {}
  ctx = evaluation.EvalContext(
      model=model, variables=variables, config=config, out_dir=os.path.join(workdir, 'eval'),
      rng=jax.random.key(0),
      load_split=lambda s: splits.setdefault(s, data.load_split(config.data, s)))
  os.makedirs(ctx.out_dir, exist_ok=True)
  out = dict(step=step, bpd=evaluation.get_mode('bpd')(ctx), halves=halves(workdir))
  out['entropy'] = evaluation.get_mode('entropy')(ctx)
  records = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  warm = config.optim.warmup_steps
  for key in sorted({k for r in records for k in r if k.startswith('split_changes_')}):
    out[key] = sum(int(r.get(key, 0)) for r in records)
    out[f'{key}_after_warmup'] = sum(int(r.get(key, 0)) for r in records if r['step'] > warm + 50)
  out['train_bpd_last'] = records[-1].get('bpd')
  out['images_per_s'] = sum(r.get('images_per_s', 0) for r in records) / max(len(records), 1)
  return out


def halves(workdir: str, num: int = 1000) -> dict:
  """Mean per-channel statistics (ops.channel_nll / channel_divergence, nats per
  dimension) of the half of u_k that goes on (x) and the half factored out (z),
  after the Shuffle, on the first `num` test images."""
  import jax
  import numpy as np
  from eiw_jax import data, shuffle
  from eiw_jax.train import runs
  from eiw_jax.evaluation.transitions import channel_orders, transition_tensors
  config = runs.saved_config(workdir)
  model, variables, _ = runs.load_for_eval(config, workdir)
  images = data.load_split(config.data, 'test').images[:num]
  us = transition_tensors(model, variables, images, jax.random.key(0))
  orders = channel_orders(model, variables, [u.shape[-1] for u in us])
  out = {}
  for k, u in enumerate(us):
    perm = orders[k][1] if orders else np.arange(u.shape[-1])
    half = u.shape[-1] // 2
    for name, fn in shuffle.STATISTICS.items():
      per_channel = np.asarray(fn(u)).mean(0)[perm]
      out[f'{name}_x_{k + 1}'] = float(per_channel[:half].mean())
      out[f'{name}_z_{k + 1}'] = float(per_channel[half:].mean())
  return out


def _lock(workdir: str):
  """An exclusive lock on the run (held until the process ends), or None if taken."""
  os.makedirs(workdir, exist_ok=True)
  f = open(os.path.join(workdir, 'run.lock'), 'w')
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    f.close()
    return None
  return f


def one_run(arm: str, seed: int, kl_weight: float) -> bool:
  """Trains and evaluates one run; False if another process holds it."""
  name = run_name(arm, seed, kl_weight)
  workdir = os.path.abspath(os.path.join(_WORKDIR.value, name))
  result_path = os.path.join(workdir, 'result.json')
  lock = _lock(workdir)
  if lock is None:
    return False
  try:
    if not os.path.exists(result_path):
      print(f'== {name} (pid {os.getpid()})', file=sys.stderr)
      _train_and_evaluate(arm, seed, kl_weight, name, workdir, result_path)
  finally:
    lock.close()
  return True


def _train_and_evaluate(arm, seed, kl_weight, name, workdir, result_path):
  from eiw_jax import train as train_lib
  config = ablation_config(_DATASET.value, arm, seed, _STEPS.value, kl_weight)
  t0 = time.time()
  train_lib.train_and_evaluate(config, workdir)
  result = dict(name=name, arm=arm, seed=seed, kl_weight=kl_weight, steps=_STEPS.value,
                train_s=time.time() - t0, **evaluate(config, workdir))
  tmp = result_path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(result, f, indent=1)
  os.replace(tmp, result_path)
  print(f'{name}: test bpd {result["bpd"]["bpd"]:.4f}', file=sys.stderr)
  _report()


def plan(results) -> list:
  """(arm, seed, λ) of every run, the arms first (seed by seed), then the λ sweep of
  the reading with the lowest mean test bits/dim once all of its arm runs are in."""
  seeds = [int(s) for s in _SEEDS.value]
  runs = [(arm, s, base_lambda()) for s in seeds for arm in _ARMS.value]
  runs += [(arm + FROZEN, s, base_lambda()) for s in seeds for arm in _FROZEN.value]
  best = ablation_report.best_reading(results, SOLVER_ARMS, len(seeds), base_lambda())
  if best is not None:
    runs += [(best, int(s), float(lam)) for s in _SWEEP_SEEDS.value for lam in _LAMBDAS.value]
  return runs


def main(argv):
  del argv
  if _ADD_HALVES.value:
    add_halves()
  while not _REPORT_ONLY.value:
    results = ablation_report.load_results(_WORKDIR.value)
    todo = [r for r in plan(results) if run_name(*r) not in results]
    if not todo:
      break
    print(f'{len(results)} of {len(plan(results))} runs done', file=sys.stderr)
    for arm, seed, lam in (reversed(todo) if _REVERSE.value else todo):
      if one_run(arm, seed, lam):
        break
    else:
      time.sleep(30)  # everything left is being trained by other processes
  _report()


def add_halves() -> None:
  """Adds `halves` to every finished run's result.json that was written without it."""
  for name, result in ablation_report.load_results(_WORKDIR.value).items():
    if 'halves' in result:
      continue
    workdir = os.path.abspath(os.path.join(_WORKDIR.value, name))
    result['halves'] = halves(workdir)
    path = os.path.join(workdir, 'result.json')
    with open(path + '.tmp', 'w') as f:
      json.dump(result, f, indent=1)
    os.replace(path + '.tmp', path)


def _report() -> None:
  results = ablation_report.load_results(_WORKDIR.value)
  if _BACKBONE.value == 'ffjord':
    ablation_report.write_cnf(results, _DOCS.value, _command(), base_lambda())
  else:
    ablation_report.write(results, _DOCS.value, _command())


def _command() -> str:
  command = ('python experiments/shuffle_ablation.py '
             f'--dataset={_DATASET.value} --workdir={_WORKDIR.value} --steps={_STEPS.value} '
             f'--seeds={",".join(_SEEDS.value)}')
  if _BACKBONE.value == 'glow':
    return command + f' --sweep_seeds={",".join(_SWEEP_SEEDS.value)}'
  return (command + f' --backbone=ffjord --arms={",".join(_ARMS.value)} '
          f'--frozen_arms={",".join(_FROZEN.value)} --lambdas={",".join(_LAMBDAS.value)} '
          f'--iw_samples={_IW.value} --eval_examples={_EVAL_EXAMPLES.value}')


if __name__ == '__main__':
  app.run(main)
