"""The workdir: one trainer at a time (the lock), paths of any kind, a workdir that
is a file, unwritable or full, checkpoints deleted under a running trainer."""
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys

import jax.numpy as jnp
import pytest

from eiw_jax import train as train_lib
from eiw_jax.errors import UserError
from eiw_jax.train import checksums, runs
from eiw_jax.train import monitor as train_monitor
from eiw_jax.train import workdir as workdir_lib
from eiw_jax.train.checkpoint import Checkpointer

from helpers import (ROOT, RUN_STEPS, committed, no_eval_hook, run_config_of, smoke_config, snapshot)


pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


def _state(seed):
  return {'w': jnp.arange(12.0).reshape(3, 4) * seed, 'step': jnp.int32(seed)}


def _restore(workdir, **kwargs):
  with Checkpointer(workdir, max_to_keep=None) as ckpt:
    return ckpt.restore(_state(0), **kwargs)


def test_workdir_path_with_spaces_and_unicode(tmp_path):
  workdir = str(tmp_path / 'my runs' / 'über 1')
  with Checkpointer(workdir) as ckpt:
    ckpt.save(3, _state(3))
  assert _restore(workdir)[1] == 3


def test_eval_of_a_workdir_that_is_a_file(tmp_path):
  (tmp_path / 'f').write_text('x')
  with pytest.raises(UserError, match='no checkpoint in'):
    runs.load_for_eval(smoke_config(), str(tmp_path / 'f'))
  assert (tmp_path / 'f').read_text() == 'x'


def test_stale_lock_file_with_garbage_is_taken_over(tmp_path):
  (tmp_path / workdir_lib.FILENAME).write_bytes(b'\xff\x00garbage')  # a killed holder's
  with workdir_lib.Lock(str(tmp_path)) as lock:
    assert open(lock.path).read().startswith(f'pid {os.getpid()} on host ')
  assert not (tmp_path / workdir_lib.FILENAME).exists()


def test_lock_released_after_a_failed_run(tmp_path):
  cfg = smoke_config()
  cfg.data.update(source='npz', dir=str(tmp_path / 'nowhere'))
  (tmp_path / 'w').mkdir()
  with pytest.raises(UserError):
    train_lib.train_and_evaluate(cfg, str(tmp_path / 'w'))
  with workdir_lib.Lock(str(tmp_path / 'w')):
    pass


def test_second_trainer_is_refused_naming_the_first(copy):
  before = snapshot(copy)
  with workdir_lib.Lock(copy):
    with pytest.raises(UserError) as e:
      train_lib.train_and_evaluate(run_config_of(), copy)
  message = str(e.value)
  assert f'pid {os.getpid()} on host {socket.gethostname()}' in message, message
  assert 'in use by another training run' in message and '\n' not in message
  assert snapshot(copy) == before  # the lock file goes with its holder


def test_a_killed_trainer_leaves_no_lock(tmp_path):
  code = ('import importlib.util, sys, time\n'
          'spec = importlib.util.spec_from_file_location("w", "eiw_jax/train/workdir.py")\n'
          'sys.modules["eiw_jax.errors"] = type(sys)("e"); sys.modules["eiw_jax.errors"].UserError = Exception\n'
          'w = importlib.util.module_from_spec(spec); spec.loader.exec_module(w)\n'
          f'w.Lock({str(tmp_path)!r}).acquire(); print("locked", flush=True); time.sleep(60)\n')
  proc = subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == 'locked'
  with pytest.raises(UserError, match=f'pid {proc.pid} '):
    workdir_lib.Lock(str(tmp_path)).acquire()
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  with workdir_lib.Lock(str(tmp_path)):  # free again, though the file is still there
    pass


def test_workdir_that_is_a_file(tmp_path):
  (tmp_path / 'f').write_text('x')
  with pytest.raises(UserError, match='is a file, not a directory'):
    train_lib.train_and_evaluate(run_config_of(), str(tmp_path / 'f'))
  assert (tmp_path / 'f').read_text() == 'x'


def test_unwritable_workdir(tmp_path, monkeypatch):
  real_open = os.open

  def refuse(path, *args, **kwargs):
    if str(path).endswith(workdir_lib.FILENAME):
      raise OSError(errno.EROFS, 'Read-only file system', path)
    return real_open(path, *args, **kwargs)

  monkeypatch.setattr(os, 'open', refuse)
  with pytest.raises(UserError, match='cannot write to the workdir .*Read-only file system'):
    train_lib.train_and_evaluate(run_config_of(), str(tmp_path / 'w'))


@pytest.mark.parametrize('where', ['metrics', 'checkpoint'])
def test_full_disk_is_one_line_and_resumable(where, copy, monkeypatch, no_eval):
  def full(*unused):
    raise OSError(errno.ENOSPC, 'No space left on device', where)

  if where == 'metrics':
    monkeypatch.setattr(train_monitor.Monitor, '_write', full)
  else:  # the first write after a save has committed
    monkeypatch.setattr(checksums, 'write', full)
  cfg = run_config_of()
  cfg.train.update(num_steps=RUN_STEPS + 2, log_every=1)
  with pytest.raises(UserError) as e:
    train_lib.train_and_evaluate(cfg, copy)
  message = str(e.value)
  assert f'No space left on device: {where}' in message and '\n' not in message
  assert 'rerun the same command' in message
  assert not os.path.exists(os.path.join(copy, workdir_lib.FILENAME))
  monkeypatch.undo()
  monkeypatch.setattr(train_monitor.Monitor, 'evaluate', no_eval_hook)
  train_lib.train_and_evaluate(cfg, copy)  # space freed: the rerun completes
  assert committed(copy)[-1] == RUN_STEPS + 2


@pytest.mark.parametrize('when', ['between_saves', 'during_a_save'])
def test_checkpoints_deleted_mid_run(when, copy, monkeypatch, no_eval):
  real_log = train_monitor.Monitor.log
  delete_at = RUN_STEPS + 1 if when == 'between_saves' else RUN_STEPS + 2  # the save of 3 may be on

  def log_and_delete(self, step, *args):
    if step == delete_at:
      shutil.rmtree(os.path.join(copy, 'checkpoints'), ignore_errors=True)
    return real_log(self, step, *args)

  monkeypatch.setattr(train_monitor.Monitor, 'log', log_and_delete)
  cfg = run_config_of()
  cfg.train.update(num_steps=RUN_STEPS + 3, log_every=1, keep_checkpoints=1)  # orbax deletes 1, 2
  if when == 'between_saves':  # the next save recreates the directory
    train_lib.train_and_evaluate(cfg, copy)
    assert committed(copy)[-1] == RUN_STEPS + 3
    return
  try:  # racing orbax's rename: it completes, or stops in one line
    train_lib.train_and_evaluate(cfg, copy)
  except UserError as e:
    assert '\n' not in str(e) and 'rerun the same command' in str(e)
  else:
    assert committed(copy)[-1] == RUN_STEPS + 3
