"""The Shuffle tested with the power to see an effect of the paper's size (issue 26).

    python experiments/shuffle_paired.py --workdir=runs/paired           # 2 CPU cores
    python experiments/shuffle_paired.py --device=gpu --workdir=runs/paired_gpu --jobs=4

The paper's gain is 0.01 bits/dim (Table 2) and seeds of short runs spread by
0.1-0.5, so arms are compared paired by seed, from one shared trained model:

- Phase A: the vanilla small model (experiments/ablation_model.py) for --phase_a
  steps per seed (evaluated at --scratch_steps on the way: the vanilla row of the
  from-scratch table). Its u_1 units (maps and channels) are then scored on
  --score_images training images by statistics.dataset_kl.
- Phase B: that checkpoint continued for --phase_b steps under each fixed order
  (experiments/paired_report.py: B0 identity, B1 the paper's direction, B2 its
  reverse, B3 random with as many units moved), with the same data order and noise.
- From scratch, as the first ablation (docs/RESULTS.md): 'random' and the
  corrected 'likelihood' reading, unit map and channel, --scratch_steps steps.

Resumable: rerun the same command; finished runs keep their result.json, an
unfinished one resumes from its newest checkpoint. --jobs worker processes take
runs in plan order (each pinned to one core on a CPU: two single-core processes
ran 1.5x the steps of one process on both cores); a progress bar counts the
runs. Each worker's log is <workdir>/worker_<i>.log. docs/RESULTS.md's paired
block for the device is rewritten after every run (--report_only: only that).
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import ablation_model, paired_report

_WORKDIR = flags.DEFINE_string('workdir', 'runs/paired', 'One sub-directory per run.')
_DEVICE = flags.DEFINE_enum('device', 'cpu', ['cpu', 'gpu'], 'Where the runs train.')
_JOBS = flags.DEFINE_integer('jobs', 2, 'Worker processes (CPU: one per core).')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2', '3'], 'Seeds of phases A and B.')
_SCRATCH_SEEDS = flags.DEFINE_list('scratch_seeds', ['0', '1', '2'], 'Seeds from scratch.')
_UNITS = flags.DEFINE_list('units', ['channel', 'map'], 'Units of phase B.')
_SCRATCH_ARMS = flags.DEFINE_list(
    'scratch_arms', ['random_map', 'likelihood_map', 'likelihood_channel'],
    '<reading>_<unit> trained from scratch beside vanilla.')
_PHASE_A = flags.DEFINE_integer('phase_a', 3000, 'Steps of phase A.')
_PHASE_B = flags.DEFINE_integer('phase_b', 3000, 'Steps of phase B.')
_SCRATCH = flags.DEFINE_integer('scratch_steps', 2000, 'Steps of the runs from scratch.')
_SCORE_IMAGES = flags.DEFINE_integer('score_images', 2000, 'Training images that score u_1.')
_IW = flags.DEFINE_integer('iw_samples', 4, 'k of the IW bound of the runs from scratch.')
_DOCS = flags.DEFINE_string('docs', 'docs', 'Where RESULTS.md goes.')
_REPORT_ONLY = flags.DEFINE_bool('report_only', False, 'Only rewrite the report.')
_WORKER = flags.DEFINE_integer('worker', -1, 'Internal: this process is worker i.')


def plan() -> list:
  """Run names in the order they are taken: phase A, phase B (the comparisons that
  matter most first), then the runs from scratch."""
  seeds = [int(s) for s in _SEEDS.value]
  runs = [f'A_s{s}' for s in seeds] + [f'B0_s{s}' for s in seeds]
  for arm in ('B1', 'B3', 'B2'):
    runs += [f'{arm}_{unit}_s{s}' for unit in _UNITS.value for s in seeds]
  runs += [f'S_{arm}_s{s}' for s in map(int, _SCRATCH_SEEDS.value) for arm in _SCRATCH_ARMS.value]
  return runs


def _dir(name: str) -> str:
  return os.path.abspath(os.path.join(_WORKDIR.value, name))


def _result(name: str):
  path = os.path.join(_dir(name), 'result.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _write_result(name: str, result: dict) -> None:
  path = os.path.join(_dir(name), 'result.json')
  with open(path + '.tmp', 'w') as f:
    json.dump(dict(name=name, **result), f, indent=1)
  os.replace(path + '.tmp', path)


def _parts(name: str):
  """'B1_map_s3' -> ('B', 'B1', 'map', 3); 'A_s0' -> ('A', 'A', None, 0)."""
  head, seed = name.rsplit('_s', 1)
  if head.startswith('S_'):
    return 'S', head[2:], None, int(seed)
  arm, _, unit = head.partition('_')
  return arm[0], arm, unit or None, int(seed)


def ready(name: str) -> bool:
  phase, _, _, seed = _parts(name)
  return phase != 'B' or _result(f'A_s{seed}') is not None


def config(name: str, steps: int, orders=None):
  phase, arm, unit, seed = _parts(name)
  if phase == 'A':
    cfg = ablation_model.ablation_config(seed=seed, steps=steps, shuffle=False)
    cfg.eval.iw_samples = _IW.value  # its evaluation at --scratch_steps
    return cfg
  if phase == 'B':
    unit = unit or 'channel'
    return ablation_model.ablation_config(seed=seed, steps=steps, shuffle=True,
                                          shuffle_mode='fixed', shuffle_unit=unit,
                                          shuffle_permutations=[orders[unit][arm]])
  reading, unit = arm.split('_')
  cfg = ablation_model.ablation_config(seed=seed, steps=steps, shuffle=True,
                                       shuffle_mode=reading, shuffle_unit=unit,
                                       shuffle_seed=seed)
  cfg.eval.iw_samples = _IW.value
  return cfg


def train(cfg, workdir: str) -> None:
  from eiw_jax import train as train_lib
  train_lib.train_and_evaluate(cfg, workdir)


def evaluate(cfg, workdir: str, modes=('bpd',)) -> dict:
  """Full-test-set evaluation of the newest checkpoint, with key 0 in every run."""
  import jax
  from eiw_jax import data, evaluation
  from eiw_jax.train import runs
  model, variables, step = runs.load_for_eval(cfg, workdir)
  splits = {}
  ctx = evaluation.EvalContext(
      model=model, variables=variables, config=cfg, out_dir=os.path.join(workdir, 'eval'),
      rng=jax.random.key(0),
      load_split=lambda s: splits.setdefault(s, data.load_split(cfg.data, s)))
  os.makedirs(ctx.out_dir, exist_ok=True)
  return dict(step=step, **{mode: evaluation.get_mode(mode)(ctx) for mode in modes})


def score(cfg, workdir: str) -> dict:
  """dataset_kl of u_1's units on the first --score_images training images."""
  import jax
  import numpy as np
  from eiw_jax import data, shuffle
  from eiw_jax.train import runs
  from eiw_jax.evaluation.transitions import transition_tensors
  model, variables, _ = runs.load_for_eval(cfg, workdir)
  images = data.load_split(cfg.data, 'train').images[:_SCORE_IMAGES.value]
  (u,) = transition_tensors(model, variables, images, jax.random.key(0))
  return {unit: np.asarray(shuffle.unit_statistic(u, 'dataset_kl', unit))[0].tolist()
          for unit in ('channel', 'map')}


def run_a(name: str, seed: int) -> dict:
  workdir = _dir(name)
  out = {}
  if seed in map(int, _SCRATCH_SEEDS.value) and _SCRATCH.value < _PHASE_A.value:
    early = os.path.join(workdir, 'scratch.json')
    if not os.path.exists(early):
      cfg = config(name, _SCRATCH.value)
      train(cfg, workdir)
      with open(early + '.tmp', 'w') as f:
        json.dump(evaluate(cfg, workdir, ('bpd', 'entropy')), f)
      os.replace(early + '.tmp', early)
    with open(early) as f:
      out['scratch'] = json.load(f)
  cfg = config(name, _PHASE_A.value)
  train(cfg, workdir)
  scores = score(cfg, workdir)
  orders = {unit: paired_report.arm_orders(s, seed) for unit, s in scores.items()}
  return dict(out, phase='A', seed=seed, scores=scores, orders=orders,
              moved={unit: o['moved'] for unit, o in orders.items()})


def run_b(name: str, arm: str, unit, seed: int) -> dict:
  source = _result(f'A_s{seed}')
  orders = source['orders']
  order = orders[unit or 'channel'][arm]
  info = dict(phase='B', arm=arm, unit=unit, seed=seed, order=order,
              moved=None if unit is None else orders[unit]['moved'])
  if order is None:
    return dict(info, bpd=None, skipped='no such split (see paired_report.arm_orders)')
  earlier = [a for a in paired_report.ARMS[:paired_report.ARMS.index(arm)]
             if orders[unit or 'channel'][a] == order]
  if earlier:  # the same order as an earlier arm: its result
    other = f'{earlier[0]}_s{seed}' if earlier[0] == 'B0' else f'{earlier[0]}_{unit}_s{seed}'
    while _result(other) is None:
      time.sleep(20)
    return dict(info, bpd=_result(other)['bpd'], same_as=other)
  workdir = _dir(name)
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    start = os.path.join(_dir(f'A_s{seed}'), 'checkpoints', str(_PHASE_A.value))
    tmp = os.path.join(workdir, 'checkpoints.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(start, os.path.join(tmp, str(_PHASE_A.value)))
    shutil.copy(os.path.join(_dir(f'A_s{seed}'), 'config.json'), workdir)
    os.replace(tmp, os.path.join(workdir, 'checkpoints'))
  cfg = config(name, _PHASE_A.value + _PHASE_B.value, orders)
  t0 = time.time()
  train(cfg, workdir)
  train_s = time.time() - t0
  return dict(info, bpd=evaluate(cfg, workdir)['bpd']['bpd'], train_s=train_s,
              steps_per_s=_PHASE_B.value / train_s)


def run_s(name: str, arm: str, seed: int) -> dict:
  cfg = config(name, _SCRATCH.value)
  t0 = time.time()
  train(cfg, _dir(name))
  train_s = time.time() - t0
  result = evaluate(cfg, _dir(name), ('bpd', 'entropy'))
  records = [json.loads(l) for l in open(os.path.join(_dir(name), 'metrics.jsonl'))]
  changes = {key: sum(int(r.get(key, 0)) for r in records)
             for key in ('split_changes_1', 'order_changes_1')}
  return dict(phase='S', arm=arm, seed=seed, train_s=train_s,
              steps_per_s=_SCRATCH.value / train_s, **changes, **result)


def one_run(name: str) -> bool:
  """Trains and records one run; False if another worker holds it."""
  os.makedirs(_dir(name), exist_ok=True)
  lock = open(os.path.join(_dir(name), 'run.lock'), 'w')
  try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    lock.close()
    return False
  if _result(name) is not None:
    return True
  phase, arm, unit, seed = _parts(name)
  print(f'{name}: start', file=sys.stderr, flush=True)
  result = {'A': lambda: run_a(name, seed), 'B': lambda: run_b(name, arm, unit, seed),
            'S': lambda: run_s(name, arm, seed)}[phase]()
  _write_result(name, dict(result, device=_DEVICE.value))
  print(f'{name}: done', file=sys.stderr, flush=True)
  report()
  return True


def work() -> None:
  while True:
    todo = [n for n in plan() if _result(n) is None]
    if not todo:
      return
    if not any(ready(n) and one_run(n) for n in todo):
      time.sleep(20)  # the rest waits for phase A or is held by other workers


def spawn_workers() -> None:
  """--jobs copies of this command as workers, with a progress bar over the runs."""
  import tqdm
  os.makedirs(_WORKDIR.value, exist_ok=True)
  procs = []
  for i in range(_JOBS.value):
    env = dict(os.environ)
    if _DEVICE.value == 'gpu':  # the workers share the GPU's memory
      env.update(XLA_PYTHON_CLIENT_PREALLOCATE='false',
                 XLA_PYTHON_CLIENT_MEM_FRACTION=f'{0.9 / _JOBS.value:.2f}')
    else:
      env['JAX_PLATFORMS'] = 'cpu'
    log = open(os.path.join(_WORKDIR.value, f'worker_{i}.log'), 'a')
    procs.append(subprocess.Popen([sys.executable, *sys.argv, f'--worker={i}'],
                                  env=env, stdout=log, stderr=subprocess.STDOUT))
  total = len(plan())
  with tqdm.tqdm(total=total, unit='run', desc='paired experiment') as bar:
    while any(p.poll() is None for p in procs):
      bar.update(sum(_result(n) is not None for n in plan()) - bar.n)
      time.sleep(10)
    bar.update(sum(_result(n) is not None for n in plan()) - bar.n)
  failed = [i for i, p in enumerate(procs) if p.returncode]
  if failed:
    sys.exit(f'workers {failed} failed; see {_WORKDIR.value}/worker_<i>.log, then rerun '
             'the same command to resume')


def report() -> None:
  results = {n: r for n in plan() if (r := _result(n)) is not None}
  device = 'CPU' if _DEVICE.value == 'cpu' else 'GPU'
  paired_report.write(results, _DOCS.value, _command(), _device_name(device),
                      dict(a=_PHASE_A.value, b=_PHASE_B.value, scratch=_SCRATCH.value,
                           score_images=_SCORE_IMAGES.value), _DEVICE.value)


def _device_name(kind: str) -> str:
  if kind == 'CPU':
    from experiments import ablation_report
    return f'{ablation_report.cpu_name()}, {os.cpu_count()} cores'
  import jax
  return jax.devices()[0].device_kind


def _command() -> str:
  return (f'python experiments/shuffle_paired.py --device={_DEVICE.value} '
          f'--workdir={_WORKDIR.value} --jobs={_JOBS.value} --seeds={",".join(_SEEDS.value)} '
          f'--phase_a={_PHASE_A.value} --phase_b={_PHASE_B.value} '
          f'--scratch_steps={_SCRATCH.value}')


def main(argv):
  del argv
  if _WORKER.value >= 0:
    if _DEVICE.value == 'cpu' and hasattr(os, 'sched_setaffinity'):
      cores = sorted(os.sched_getaffinity(0))
      os.sched_setaffinity(0, {cores[_WORKER.value % len(cores)]})
    import eiw_jax
    print(f'worker {_WORKER.value}: eiw_jax from {os.path.dirname(eiw_jax.__file__)}',
          file=sys.stderr, flush=True)
    work()
    return
  if not _REPORT_ONLY.value:
    spawn_workers()
  report()


if __name__ == '__main__':
  app.run(main)
