"""A run killed (SIGKILL) or preempted (SIGTERM) at random steps resumes to the
uninterrupted run bit for bit (train.py as a subprocess)."""
import os
import signal
import subprocess
import sys
import time



from helpers import (ARGS, NUM_STEPS, ROOT, assert_bitwise, committed, metrics_of, saved_params)


def _wait_for(proc, condition, timeout=240):
  t0 = time.time()
  while not condition():
    assert proc.poll() is None, 'the run ended before it could be interrupted'
    assert time.time() - t0 < timeout, 'timed out'
    time.sleep(0.005)


def test_killed_and_terminated_runs_resume_bitwise(ref, env, tmp_path):
  workdir, log = str(tmp_path / 'w'), tmp_path / 'log.txt'

  def start():
    return subprocess.Popen([sys.executable, 'train.py', *ARGS, f'--workdir={workdir}'],
                            cwd=ROOT, env=env, stdout=open(log, 'w'), stderr=subprocess.STDOUT)

  ckpt_dir = os.path.join(workdir, 'checkpoints')
  saving = lambda: os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir)
  # 1. SIGKILL as the first checkpoint is being written.
  proc = start()
  _wait_for(proc, saving)
  proc.kill()
  proc.wait()
  # 2. SIGTERM: saves the current step, says so, exits 0.
  proc = start()
  _wait_for(proc, lambda: committed(workdir) and committed(workdir)[-1] >= 3)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=60) == 0, log.read_text()
  out = log.read_text()
  saved = committed(workdir)[-1]
  assert f'SIGTERM: saved a checkpoint at step {saved};' in out and saved < NUM_STEPS, out
  # 3. SIGKILL once it has gone past the terminated step.
  proc = start()
  _wait_for(proc, lambda: committed(workdir)[-1] > saved)
  proc.kill()
  proc.wait()
  newest = committed(workdir)[-1]
  assert newest > saved  # a good checkpoint is never deleted before a newer one is complete
  # 4. Run to the end.
  proc = start()
  assert proc.wait(timeout=240) == 0, log.read_text()
  out = log.read_text()
  assert f'resumed from step {newest}' in out and 'final test bits/dim' in out, out
  assert_bitwise(saved_params(workdir), saved_params(ref))
  assert metrics_of(workdir) == metrics_of(ref)  # killed runs' extra records are dropped
