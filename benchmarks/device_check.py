"""The device check: one command for a machine with an accelerator, with whatever
JAX it has and no network, made to end within 8 minutes on one GPU:

  python -m benchmarks.device_check --out=device_check     # or: make device-check
  python -m benchmarks.device_check --smoke --out=/tmp/dc  # a tiny CPU run of the same

Phases, in this order, each in a child process stopped at its time limit (what is
left of --deadline_s at most; a phase that does not fit is marked skipped):

  tests      a subset of the suite on the device: exact inverses, log-dets against
             jacfwd, a few training steps, checkpoint and resume, bfloat16 (float32
             matmuls at 'highest' precision and XLA's deterministic GPU ops, so the
             suite's tolerances and bitwise resume mean what they mean on a CPU)
  cold       start-up of the paper model (EIW, --batch) from an empty compilation cache
  warm       the same with the cache the cold start filled (a restart)
  paper      EIW against vanilla (images/s, the ratio, peak memory) and bfloat16
             against float32 (speed, first-step loss), interleaved rounds
  two        1 against 2 devices on the suite's smoke run (skipped on one device)
  peer       DenseFlow's PyTorch step, if --peer_cmd gives a command that prints the
             JSON line of ../shared/peer/bench_denseflow.py (images_per_s)
  autotune   cold start and step under XLA's default GPU autotuning, the others
             running at --autotune_level (0 by default: no autotuning, the short
             compile); the step-time ratio says what the short compile costs

Writes device_check.json and device_check.md (a table) under --out.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA = 1
PHASES = ('tests', 'cold', 'warm', 'paper', 'two', 'peer', 'autotune')
TESTS = (  # fast tests of what must hold on any backend
    'tests/bijectors/test_bijectors.py',
    'tests/test_flow.py::test_flow_round_trip_and_logdet_sign',
    'tests/test_flow.py::test_flow_logdet_matches_jacobian',
    'tests/test_api.py::test_forward_and_inverse_follow_the_bijector_contract',
    'tests/test_api.py::test_jacfwd_through_the_flow_equals_jacrev',
    'tests/backbones/test_paper_model.py::test_tiny_denseflow_round_trip',
    'tests/backbones/test_paper_model.py::test_tiny_denseflow_logdet_matches_jacobian',
    'tests/backbones/test_paper_model.py::'
    'test_tiny_denseflow_bfloat16_loss_close_and_exact_round_trip',
    'tests/train/test_checkpoint.py::test_round_trip_typed_state',
    'tests/train/test_loop.py::test_training_writes_metrics_checkpoints_and_samples',
    'tests/train/test_loop.py::test_resume_continues_and_matches_uninterrupted',
)
SMOKE_TESTS = ('tests/test_versions.py',)
# Each phase's own limit in seconds (GPU), before the deadline's.
LIMITS = dict(tests=120, cold=150, warm=60, paper=150, two=90, peer=90, autotune=400)
NEEDED = ('jax', 'flax', 'optax', 'orbax.checkpoint', 'ml_collections', 'tensorboardX', 'absl',
          'PIL', 'tqdm')


def _args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--out', default='device_check', help='folder for the JSON and the table')
  p.add_argument('--config', default='configs/cifar10.py', help="the model; 'tiny' in --smoke")
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--steps', type=int, default=5, help='steps per timing round')
  p.add_argument('--deadline_s', type=float, default=450.0, help='for all phases together')
  p.add_argument('--autotune_level', default='0', help="XLA's GPU autotune level ('' : default)")
  p.add_argument('--phases', default=','.join(PHASES))
  p.add_argument('--peer_cmd', default=os.environ.get('EIW_PEER_CMD', ''))
  p.add_argument('--smoke', action='store_true', help='tiny model and limits: a CPU run')
  p.add_argument('--phase', help=argparse.SUPPRESS)  # in a child: run this phase
  p.add_argument('--result', help=argparse.SUPPRESS)  # in a child: write its dict here
  a = p.parse_args(argv)
  if a.smoke:
    a.config, a.batch, a.rounds, a.steps = 'tiny', 8, 1, 1
  return a


def _child(a) -> None:
  """Runs phase `a.phase` in this process and writes its dict to `a.result`."""
  from eiw_jax import cli  # pylint: disable=g-import-not-at-top  (one LAPACK thread)
  from benchmarks import device_phases as ph  # pylint: disable=g-import-not-at-top
  cli.enable_compilation_cache(os.environ.get('EIW_DEVICE_CHECK_CACHE', ''))
  result = {'machine': machine,
            'cold': lambda: ph.startup(a.config, a.batch),
            'warm': lambda: ph.startup(a.config, a.batch),
            'paper': lambda: ph.paper(a.config, a.batch, a.rounds, a.steps),
            'autotune': lambda: ph.autotune(a.config, a.batch, a.steps),
            'two': ph.two_devices}[a.phase]()
  with open(a.result, 'w') as f:
    json.dump(result, f)


def _run(cmd, limit, log, env=None):
  """(return code or 'timeout', seconds): `cmd` in its own process group, killed
  whole at `limit` seconds; its output goes to the file `log`."""
  t0 = time.perf_counter()
  with open(log, 'w') as f:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
      rc = proc.wait(timeout=max(limit, 1))
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
      rc = 'timeout'
  return rc, time.perf_counter() - t0


def _tests(a, limit, out):
  log = os.path.join(out, 'tests.log')
  flags = os.environ.get('XLA_FLAGS', '') + ' --xla_gpu_deterministic_ops=true'
  env = dict(os.environ, JAX_DEFAULT_MATMUL_PRECISION='highest', XLA_FLAGS=flags.strip())
  cmd = [sys.executable, '-m', 'pytest', '-v', '-p', 'no:cacheprovider', '-o', 'addopts=',
         *(SMOKE_TESTS if a.smoke else TESTS)]
  rc, seconds = _run(cmd, limit, log, env)
  outcomes = re.findall(r'^(tests/\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)',
                        open(log).read(), re.M)
  counts = {k.lower(): sum(1 for _, o in outcomes if o == k)
            for k in ('PASSED', 'FAILED', 'ERROR', 'SKIPPED')}
  status = 'timeout' if rc == 'timeout' else ('ok' if rc == 0 else 'failed')
  return dict(status=status, seconds=seconds, **counts, log='tests.log',
              not_passed=[f'{t} {o}' for t, o in outcomes if o in ('FAILED', 'ERROR')])


def _phase(a, name, limit, out, caches):
  """One measurement phase in a child process (device_phases)."""
  if name == 'peer':
    return _peer(a, limit, out)
  path = os.path.join(out, f'{name}.json')
  flags = os.environ.get('XLA_FLAGS', '')
  if name != 'autotune' and a.autotune_level != '':
    flags = f'{flags} --xla_gpu_autotune_level={a.autotune_level}'.strip()
  env = dict(os.environ, XLA_FLAGS=flags,
             EIW_DEVICE_CHECK_CACHE=caches['default' if name == 'autotune' else 'level'])
  cmd = [sys.executable, '-m', 'benchmarks.device_check', f'--phase={name}', f'--result={path}',
         f'--config={a.config}', f'--batch={a.batch}', f'--rounds={a.rounds}',
         f'--steps={a.steps}']
  rc, seconds = _run(cmd, limit, os.path.join(out, f'{name}.log'), env)
  result = dict(status='timeout' if rc == 'timeout' else ('ok' if rc == 0 else 'failed'),
                seconds=seconds, xla_flags=flags, log=f'{name}.log')
  if rc == 0:
    with open(path) as f:
      result.update(json.load(f))
    os.remove(path)
  return result


def _peer(a, limit, out):
  if not a.peer_cmd:
    return dict(status='skipped', reason='no --peer_cmd (DenseFlow PyTorch harness) given')
  log = os.path.join(out, 'peer.log')
  rc, seconds = _run(['bash', '-c', a.peer_cmd], limit, log)
  lines = [l for l in open(log).read().splitlines() if l.strip().startswith('{')]
  try:
    peer = json.loads(lines[-1])
    float(peer['images_per_s'])
  except (IndexError, ValueError, KeyError, TypeError):
    return dict(status='timeout' if rc == 'timeout' else 'failed', seconds=seconds, log='peer.log')
  return dict(peer, status='ok', seconds=seconds, log='peer.log')


def machine() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  versions = {}
  for name in ('flax', 'optax', 'orbax.checkpoint', 'torch'):
    try:
      versions[name] = __import__(name, fromlist=['_']).__version__
    except Exception:  # pylint: disable=broad-except
      versions[name] = None
  return dict(platform=platform.platform(), python=platform.python_version(),
              cpu=_cpu_model(), cpu_count=os.cpu_count(),
              load=' '.join(f'{x:.2f}' for x in os.getloadavg()),
              backend=jax.default_backend(), devices=[str(d) for d in jax.devices()],
              device_kind=jax.devices()[0].device_kind, jax=jax.__version__,
              jaxlib=jaxlib.__version__, **versions)


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      return next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def missing_packages() -> list:
  import importlib.util  # pylint: disable=g-import-not-at-top
  return [m for m in NEEDED if importlib.util.find_spec(m.split('.')[0]) is None or (
      '.' in m and importlib.util.find_spec(m) is None)]


def main(argv=None) -> int:
  a = _args(argv)
  if a.phase:
    _child(a)
    return 0
  from benchmarks import device_report  # pylint: disable=g-import-not-at-top
  os.makedirs(a.out, exist_ok=True)
  out, t_start = os.path.abspath(a.out), time.perf_counter()
  report = dict(schema=SCHEMA, started=datetime.datetime.now().astimezone().isoformat(
      timespec='seconds'), command=' '.join([os.path.basename(sys.executable), '-m',
      'benchmarks.device_check', *(sys.argv[1:] if argv is None else argv)]),
      options=dict(config=a.config, batch=a.batch, rounds=a.rounds, steps=a.steps,
                   deadline_s=a.deadline_s, autotune_level=a.autotune_level, smoke=a.smoke),
      phases={})
  missing = missing_packages()
  if missing:
    report['missing_packages'] = missing
    device_report.write(report, out)
    print(f'device check: missing Python packages {missing} (see `make device-wheels`)',
          file=sys.stderr)
    return 1
  # The parent never opens the device itself: a process holding a GPU keeps most of
  # its memory, and a TPU admits one process. A child reads what the machine is.
  info = _phase(a, 'machine', 120, out, dict(level='', default=''))
  if info['status'] != 'ok':
    report['machine'] = info
    device_report.write(report, out)
    print(f'device check: JAX does not start here; see {out}/machine.log', file=sys.stderr)
    return 1
  report['machine'] = {k: v for k, v in info.items() if k not in ('status', 'log', 'xla_flags')}
  caches = {k: tempfile.mkdtemp(prefix=f'eiw_device_check_{k}_') for k in ('level', 'default')}
  wanted = [p for p in a.phases.split(',') if p]
  try:
    for name in PHASES:
      left = a.deadline_s - (time.perf_counter() - t_start)
      limit = min(LIMITS[name], left) if not a.smoke else left
      if name not in wanted:
        report['phases'][name] = dict(status='skipped', reason='not in --phases')
      elif limit < 20:
        report['phases'][name] = dict(status='skipped', reason='out of time (--deadline_s)')
      elif name == 'two' and len(report['machine']['devices']) < 2:
        report['phases'][name] = dict(status='skipped', reason='1 device')
      else:
        print(f'device check: {name} (up to {limit:.0f} s)', file=sys.stderr, flush=True)
        report['phases'][name] = (_tests(a, limit, out) if name == 'tests'
                                  else _phase(a, name, limit, out, caches))
      device_report.write(report, out)  # what is done so far, should a later phase hang
  finally:
    for path in caches.values():
      shutil.rmtree(path, ignore_errors=True)
  report['seconds'] = time.perf_counter() - t_start
  report['load_at_end'] = ' '.join(f'{x:.2f}' for x in os.getloadavg())
  device_report.write(report, out)
  print(open(os.path.join(out, 'device_check.md')).read())
  return 0 if all(p['status'] in ('ok', 'skipped') for p in report['phases'].values()) else 1


if __name__ == '__main__':
  sys.exit(main())
