"""Ctrl-C (SIGINT) on real processes: on train.py the first saves the current step like
SIGTERM and the process ends as interrupted; a second, while the save is under way,
stops at once without saving; one outside the training loop is one line. No
traceback."""
import os
import signal
import subprocess
import sys
import time

from helpers import ARGS, ROOT, committed


def _start(env, workdir, log):
  return subprocess.Popen([sys.executable, 'train.py', *ARGS, f'--workdir={workdir}',
                           '--config.train.num_steps=100000', '--config.train.eval_every=100000',
                           '--config.train.checkpoint_every=100000'],
                          cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(log, 'w'))


def _wait_for(proc, condition, timeout=240):
  t0 = time.time()
  while not condition():
    assert proc.poll() is None and time.time() - t0 < timeout, 'ended before the signal'
    time.sleep(0.02)


def test_ctrl_c_saves_the_current_step(env, tmp_path):
  workdir, log = str(tmp_path / 'w'), tmp_path / 'log.txt'
  metrics = os.path.join(workdir, 'metrics.jsonl')
  # 1. Once it trains: saves the step it is at, says so, ends as interrupted (130).
  proc = _start(env, workdir, log)
  _wait_for(proc, lambda: os.path.exists(metrics) and os.path.getsize(metrics) > 0)
  proc.send_signal(signal.SIGINT)
  assert proc.wait(timeout=120) == -signal.SIGINT
  err = log.read_text()
  saved = committed(workdir)[-1]
  lines = [l for l in err.splitlines() if 'Ctrl-C' in l]
  assert lines == ['Ctrl-C: saving a checkpoint of the current step (Ctrl-C again stops at '
                   'once, without saving)',
                   f'Ctrl-C: saved a checkpoint at step {saved}; rerun the same command to '
                   'resume'], err
  assert saved > 0 and 'Traceback' not in err  # no periodic save but step 0's: Ctrl-C's
  assert not os.path.exists(os.path.join(workdir, 'train.lock'))


_SLOW_SAVE = """
import sys, time
from eiw_jax.train import multihost
with multihost.Preemption() as preemption:
  print('ready', flush=True)
  while not preemption.requested(0):
    time.sleep(0.01)
  time.sleep(60)  # a save that takes long (a slow network disk)
print('finished', flush=True)
"""


def test_a_second_ctrl_c_stops_at_once(env):
  proc = subprocess.Popen([sys.executable, '-c', _SLOW_SAVE], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  assert proc.stdout.readline() == 'ready\n'
  proc.send_signal(signal.SIGINT)
  assert 'Ctrl-C: saving a checkpoint' in proc.stderr.readline() + proc.stderr.readline()
  t0 = time.time()
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=30)
  assert proc.returncode == -signal.SIGINT and time.time() - t0 < 10
  assert 'Ctrl-C again: stopped at once, without saving' in err and 'Traceback' not in err
  assert 'finished' not in out


_OUTSIDE_THE_LOOP = """
import time
from eiw_jax import cli

def main(argv):
  print('ready', flush=True)
  time.sleep(60)  # compiling, restoring, evaluating: no training step to save

cli.run_main(main)
"""


def test_ctrl_c_outside_the_training_loop_is_one_line(env):
  proc = subprocess.Popen([sys.executable, '-c', _OUTSIDE_THE_LOOP], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  assert proc.stdout.readline() == 'ready\n'
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=30)
  assert proc.returncode == -signal.SIGINT
  assert [l for l in err.splitlines() if l.strip()] == [
      'interrupted (Ctrl-C) outside the training steps: nothing was saved now; what was '
      'written before is whole: rerun the same command to go on'], err
