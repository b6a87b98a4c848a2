"""Several processes on one machine: train.py with --config.train.distributed=True as
two subprocesses on localhost, each with two simulated CPU devices (4 in all).

They must reach the losses and parameters of one process with one device on the same
global batches; only process 0 writes metrics, samples and the progress bar; the
checkpoint is written by both; a dead process stops the other with one line; a SIGTERM
to one process makes both save the same step and exit 0; and a run so interrupted,
then SIGKILLed in both processes, ends bit for bit like the uninterrupted two-process
run. Every wait has a hard
timeout, so a hang fails the test instead of blocking it.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from eiw_jax import train as train_lib
from helpers import ROOT, assert_bitwise, committed, metrics_of, saved_params, smoke_config

NUM_STEPS = 30
TRAIN = dict(num_steps=NUM_STEPS, checkpoint_every=2, log_every=1, eval_every=NUM_STEPS)
ARGS = ['--config=configs/fashion_mnist.py:smoke', '--config.data.source=synthetic',
        '--config.train.distributed=True', '--config.train.num_processes=2',
        '--config.train.heartbeat_timeout_s=20',
        *[f'--config.train.{k}={v}' for k, v in TRAIN.items()]]
TIMEOUT = 240  # seconds for any one launch (compiles included)

pytestmark = pytest.mark.slow  # ~2-3 min on 2 busy cores (6 launches of 2 processes)


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  """Two CPU devices per process; a compilation cache shared by every launch."""
  return dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
              JAX_PLATFORMS='cpu',
              JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp('jax_cache')),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


class Run:
  """Processes 0 and 1 of one `train.py` command; stderr+stdout of each in a file."""

  launches = 0

  def __init__(self, env, workdir, logs, *extra):
    port = _free_port()
    Run.launches += 1
    self.logs = [os.path.join(logs, f'run{Run.launches}_p{i}.txt') for i in range(2)]
    self.procs = [subprocess.Popen(
        [sys.executable, 'train.py', *ARGS, *extra, f'--workdir={workdir}',
         f'--config.train.coordinator_address=localhost:{port}',
         f'--config.train.process_id={i}'],
        cwd=ROOT, env=env, stdout=open(log, 'w'), stderr=subprocess.STDOUT)
                  for i, log in enumerate(self.logs)]

  def wait(self, timeout=TIMEOUT):
    """The exit codes; kills both and fails after `timeout` seconds."""
    t0 = time.time()
    try:
      return [p.wait(timeout=max(1, timeout - (time.time() - t0))) for p in self.procs]
    except subprocess.TimeoutExpired:
      self.kill()
      pytest.fail(f'the processes hung for {timeout}s:\n{self.output(0)[-3000:]}')

  def wait_for(self, condition, timeout=TIMEOUT):
    t0 = time.time()
    while not condition():
      if any(p.poll() is not None for p in self.procs):
        self.kill()
        pytest.fail(f'a process ended early:\n{self.output(0)[-3000:]}\n{self.output(1)[-3000:]}')
      if time.time() - t0 > timeout:
        self.kill()
        pytest.fail(f'timed out:\n{self.output(0)[-3000:]}')
      time.sleep(0.01)

  def kill(self):
    for p in self.procs:
      if p.poll() is None:
        p.kill()
        p.wait()

  def output(self, i):
    with open(self.logs[i]) as f:
      return f.read()


def _steps_logged(workdir, old_inode=None):
  """The steps in metrics.jsonl; [] while it is the file of inode `old_inode`."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path) or os.stat(path).st_ino == old_inode:
    return []
  with open(path) as f:
    return [json.loads(l)['step'] for l in f if l.endswith('\n')]


@pytest.fixture(scope='module')
def two(env, tmp_path_factory):
  """An uninterrupted two-process run: (workdir, Run, exit codes)."""
  root = tmp_path_factory.mktemp('two')
  run = Run(env, str(root / 'w'), str(root))
  codes = run.wait()
  return str(root / 'w'), run, codes


@pytest.fixture(scope='module')
def one(tmp_path_factory):
  """The same run in this process, on its one device."""
  workdir = str(tmp_path_factory.mktemp('one'))
  train_lib.train_and_evaluate(smoke_config(**TRAIN), workdir)
  return workdir


def test_two_processes_match_one(two, one):
  """Same losses (rtol 1e-5), parameters and optimiser state (rtol 1e-5 + atol 1e-5) as
  one process on one device, on the same global batches: each process fed only its own
  rows (data.batches' per-process shard, tests/test_data.py) and they add up to them."""
  workdir, run, codes = two
  assert codes == [0, 0], run.output(0)[-3000:] + run.output(1)[-3000:]
  ours, theirs = metrics_of(workdir), metrics_of(one)
  assert [r['step'] for r in ours] == [r['step'] for r in theirs] == list(range(1, NUM_STEPS + 1))
  np.testing.assert_allclose([r['loss'] for r in ours], [r['loss'] for r in theirs], rtol=1e-5)
  for a, b in zip(*(jax.tree.leaves(saved_params(w)) for w in (workdir, one))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_only_process_0_reports_and_both_write_the_checkpoint(two):
  workdir, run, codes = two
  assert codes == [0, 0]
  out0, out1 = run.output(0), run.output(1)
  assert 'step/s' in out0 and 'final test bits/dim' in out0 and 'test bpd' in out0
  assert 'step/s' not in out1 and 'final test bits/dim' not in out1 and 'test bpd' not in out1
  assert os.listdir(os.path.join(workdir, 'samples')) == [f'step_{NUM_STEPS:08d}.png']
  assert len(os.listdir(os.path.join(workdir, 'tb'))) == 1  # one event file
  step_dir = os.path.join(workdir, 'checkpoints', str(NUM_STEPS), 'default')
  assert {'ocdbt.process_0', 'ocdbt.process_1'} <= set(os.listdir(step_dir))


def test_dead_process_sigterm_of_one_and_bitwise_resume(two, env, tmp_path):
  workdir, logs = str(tmp_path / 'w'), str(tmp_path)
  # 1. Process 1 is SIGKILLed after the first checkpoint: process 0 stops by itself
  # with one line and exit code 1, within train.heartbeat_timeout_s / 2 = 10 s of
  # silence (not JAX's abort at 20 s, not a hang).
  run = Run(env, workdir, logs)
  # Step 0 is saved before training starts: wait for a checkpoint of a trained step,
  # so that the run has a history (metrics.jsonl) to keep.
  run.wait_for(lambda: committed(workdir)[-1:] > [0]
               and os.path.exists(os.path.join(workdir, 'metrics.jsonl')))
  run.procs[1].kill()
  t0 = time.time()
  codes = run.wait(timeout=60)
  out = run.output(0)
  errors = [l for l in out.splitlines() if l.startswith('error: ')]
  assert codes == [1, -signal.SIGKILL] and len(errors) == 1, out[-3000:]
  assert 'has probably died' in errors[0] and time.time() - t0 < 20, errors
  assert 'Traceback' not in out
  killed_at = committed(workdir)[-1]
  # 2. A SIGTERM to process 1 only: both save the same step and exit 0.
  old = os.stat(os.path.join(workdir, 'metrics.jsonl')).st_ino  # replaced on resume
  run = Run(env, workdir, logs)
  run.wait_for(lambda: _steps_logged(workdir, old)[-1:] > [killed_at])
  run.procs[1].send_signal(signal.SIGTERM)
  assert run.wait() == [0, 0], run.output(0)[-3000:] + run.output(1)[-3000:]
  saved = committed(workdir)[-1]
  assert f'resumed from step {killed_at}' in run.output(0)
  assert f'SIGTERM: saved a checkpoint at step {saved};' in run.output(0)
  assert killed_at < saved < NUM_STEPS, saved
  # 3. Both processes SIGKILLed once a newer checkpoint is committed.
  run = Run(env, workdir, logs)
  run.wait_for(lambda: committed(workdir)[-1] > saved)
  run.kill()
  newest = committed(workdir)[-1]
  # 4. The rerun ends bit for bit like the uninterrupted run.
  run = Run(env, workdir, logs)
  assert run.wait() == [0, 0], run.output(0)[-3000:]
  assert f'resumed from step {newest}' in run.output(0)
  assert_bitwise(saved_params(workdir), saved_params(two[0]))
  assert metrics_of(workdir) == metrics_of(two[0])


class _Store:
  """JAX's key-value store as the Watchdog uses it; peer 1 writes what `beats` says."""

  def __init__(self, beats):
    self.beats, self.calls = beats, 0

  def key_value_set(self, key, value, allow_overwrite=False):
    del key, value, allow_overwrite

  def key_value_try_get(self, key):
    assert key.endswith('/1')
    self.calls += 1
    beat = self.beats(self.calls)
    if beat is None:
      raise KeyError(key)  # not written yet
    return beat


@pytest.mark.parametrize('beats, stops', [
    (lambda n: None, False),                   # still compiling its step: not judged yet
    (lambda n: str(n), False),                 # alive
    (lambda n: '1', True),                     # counted once, then silent: dead
])
def test_the_watchdog_judges_a_peer_once_it_has_started_counting(monkeypatch, beats, stops):
  from eiw_jax.train import multihost  # pylint: disable=g-import-not-at-top
  stopped = []
  monkeypatch.setattr(multihost.jax, 'process_index', lambda: 0)
  monkeypatch.setattr(multihost.jax, 'process_count', lambda: 2)
  monkeypatch.setattr(multihost, '_stop_now', stopped.append)
  watchdog = multihost.Watchdog(timeout=0.3)
  watchdog._client = _Store(beats)  # pylint: disable=protected-access
  thread = multihost.threading.Thread(
      target=watchdog._watch, daemon=True)  # pylint: disable=protected-access
  thread.start()
  time.sleep(1.2)
  watchdog._stop.set()  # pylint: disable=protected-access
  thread.join(5)
  assert bool(stopped) == stops, stopped
  assert not stops or 'process 1 has shown no sign of life' in stopped[0]
