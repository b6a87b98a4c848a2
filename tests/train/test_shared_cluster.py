"""What users of a shared cluster do to a run (docs/RELIABILITY.md, "Shared clusters"):
move or delete its workdir while it trains, reach it through links, keep checkpoints
on another disk, copy it to another machine or half-sync it, edit clocks, quote a
'~'. In-process runs of the shared smoke run; a network file system's errors
(ENOLCK, ESTALE, ENOTCONN, EDQUOT) are simulated, as this machine has none."""
import errno
import fcntl
import json
import os
import shutil
import time

import pytest

from eiw_jax import train as train_lib
from eiw_jax.errors import UserError
from eiw_jax.train import history, multihost, runs
from eiw_jax.train import monitor as train_monitor
from eiw_jax.train import workdir as workdir_lib

from helpers import (RUN_STEPS, ReadOnlyView, Tmpfs, committed, metrics_of, needs_mount,
                     restore_run, run_config_of, snapshot)


pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


def _longer(steps=1, **train):
  cfg = run_config_of()
  cfg.train.update(num_steps=RUN_STEPS + steps, log_every=1, **train)
  return cfg


def _data_file(workdir, step):
  folder = os.path.join(workdir, 'checkpoints', str(step), 'default')
  files = [os.path.join(d, n) for d, _, names in os.walk(folder) for n in names
           if os.sep + 'd' in d]
  return max(files, key=os.path.getsize)


@pytest.mark.parametrize('what', ['moved', 'deleted', 'moved_during_the_start_up'])
def test_a_workdir_moved_or_deleted_while_training_stops_in_one_line(what, copy, no_eval,
                                                                     monkeypatch):
  moved = copy + '-moved'

  def move():
    if os.path.exists(copy):
      shutil.rmtree(copy) if what == 'deleted' else shutil.move(copy, moved)

  if what == 'moved_during_the_start_up':  # before the monitor made its files
    real_check = history.check_data
    monkeypatch.setattr(history, 'check_data', lambda *args: (real_check(*args), move())[0])
  else:
    real_tick = train_monitor.Monitor.tick
    monkeypatch.setattr(train_monitor.Monitor, 'tick',
                        lambda self, *args: (move(), real_tick(self, *args))[1])
  with pytest.raises(UserError) as e:
    train_lib.train_and_evaluate(_longer(2), copy)
  message = str(e.value)
  assert f'the workdir {copy} was moved, replaced or deleted while training' in message
  step = RUN_STEPS if what == 'moved_during_the_start_up' else RUN_STEPS + 1
  assert f'noticed at step {step}' in message and '\n' not in message
  assert not os.path.exists(copy)  # nothing written on at the old path
  if what != 'deleted':
    monkeypatch.undo()
    monkeypatch.setattr(train_monitor.Monitor, 'evaluate', lambda *a: {})
    train_lib.train_and_evaluate(_longer(2), moved)  # the same command at its new place
    assert committed(moved)[-1] == RUN_STEPS + 2


def test_a_workdir_reached_through_a_link_is_the_same_workdir(copy, tmp_path, no_eval,
                                                              monkeypatch):
  link = str(tmp_path / 'link')
  os.symlink(copy, link)
  monkeypatch.chdir(tmp_path)
  with workdir_lib.Lock(link):
    for other in (copy + '/', os.path.relpath(copy), link + '/'):
      with pytest.raises(UserError, match='in use by another training run'):
        workdir_lib.Lock(other).acquire()
  train_lib.train_and_evaluate(_longer(), 'link/')
  assert committed(copy)[-1] == RUN_STEPS + 1 and os.path.islink(link)


@needs_mount
def test_checkpoints_on_another_disk_fall_back_across_file_systems(copy, tmp_path, capsys):
  disk = Tmpfs(tmp_path / 'big_disk', size='16m')
  try:
    ckpt = os.path.join(copy, 'checkpoints')
    shutil.move(ckpt, os.path.join(disk.path, 'checkpoints'))
    os.symlink(os.path.join(disk.path, 'checkpoints'), ckpt)
    path = _data_file(copy, RUN_STEPS)
    data = bytearray(open(path, 'rb').read())
    data[len(data) // 2] ^= 1
    open(path, 'wb').write(bytes(data))
    _, step = restore_run(copy, run_config_of())
    assert step == RUN_STEPS - 1
    assert os.listdir(os.path.join(copy, 'corrupt_checkpoints')) == [f'{RUN_STEPS}-1']
    assert 'moved unreadable checkpoint step' in capsys.readouterr().err
    assert sorted(os.listdir(ckpt)) == [str(s) for s in range(RUN_STEPS)]
  finally:
    disk.close()


def test_a_file_system_without_locks_warns_and_trains(tmp_path, monkeypatch, capsys):
  """Simulated: flock answers ENOLCK, as some NFS mounts do."""
  def no_locks(*unused):
    raise OSError(errno.ENOLCK, 'No locks available')

  monkeypatch.setattr(fcntl, 'flock', no_locks)
  with workdir_lib.Lock(str(tmp_path)) as lock:
    assert open(lock.path).read().startswith(f'pid {os.getpid()} ')
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'cannot be locked (No locks available' in err
  assert 'make sure no other train.py uses this workdir' in err
  assert not os.path.exists(os.path.join(tmp_path, workdir_lib.FILENAME))


@pytest.mark.parametrize('code', ['ESTALE', 'ENOTCONN', 'EDQUOT'])
def test_a_network_disk_failing_mid_run_is_one_line(code, copy, no_eval, monkeypatch):
  """Simulated: a stale NFS handle, a FUSE mount gone, a quota hit, at a metrics write."""
  number = getattr(errno, code)

  def failing(*unused):
    raise OSError(number, os.strerror(number), 'metrics.jsonl')

  monkeypatch.setattr(train_monitor.Monitor, '_write', failing)
  with pytest.raises(UserError) as e:
    train_lib.train_and_evaluate(_longer(), copy)
  message = str(e.value)
  assert f'({os.strerror(number)}: metrics.jsonl)' in message and '\n' not in message
  assert 'rerun the same command' in message


def test_file_times_from_a_skewed_clock_change_nothing(copy, no_eval):
  """A run copied from a machine whose clock is a day ahead (and one a day behind)."""
  for i, (folder, _, names) in enumerate(os.walk(copy)):
    for path in [folder] + [os.path.join(folder, n) for n in names]:
      t = time.time() + (86400 if i % 2 else -86400)
      os.utime(path, (t, t))
  train_lib.train_and_evaluate(_longer(), copy)
  assert committed(copy)[-1] == RUN_STEPS + 1
  assert [r['step'] for r in metrics_of(copy)] == [RUN_STEPS, RUN_STEPS + 1]


def test_the_time_budget_ignores_the_wall_clock(monkeypatch):
  budget = multihost.TimeBudget(60)
  monkeypatch.setattr(time, 'time', lambda: 4e9)  # the clock set a century ahead
  assert not budget.spent()


def test_a_run_copied_from_another_machine_resumes(copy, no_eval):
  """Its train.lock came along, naming a process of the other machine."""
  lock = os.path.join(copy, workdir_lib.FILENAME)
  open(lock, 'w').write('pid 4242 on host gpu-node-17\n')
  train_lib.train_and_evaluate(_longer(), copy)
  assert committed(copy)[-1] == RUN_STEPS + 1 and not os.path.exists(lock)


def test_a_half_synced_newest_step_is_skipped(copy, capsys):
  """rsync still copying: the newest step lacks a data file and holds rsync's
  temporary file. eval uses the step before and touches nothing; training moves the
  half step aside."""
  path = _data_file(copy, RUN_STEPS)
  os.rename(path, os.path.join(os.path.dirname(path), '.' + os.path.basename(path) + '.Xa9Q2'))
  before = snapshot(copy)
  assert runs.load_for_eval(run_config_of(), copy)[2] == RUN_STEPS - 1
  assert snapshot(copy) == before
  assert restore_run(copy, run_config_of())[1] == RUN_STEPS - 1
  assert os.listdir(os.path.join(copy, 'corrupt_checkpoints')) == [f'{RUN_STEPS}-1']
  assert 'is missing' in capsys.readouterr().err


def test_an_empty_config_json_is_one_line(copy):
  """Half-synced: config.json created, not yet filled."""
  open(os.path.join(copy, 'config.json'), 'w').close()
  before = snapshot(copy)
  with pytest.raises(UserError, match='config.json is unreadable .*pass --config='):
    runs.saved_config(copy)
  with pytest.raises(UserError, match='config.json is not valid JSON'):
    train_lib.train_and_evaluate(run_config_of(), copy)
  assert snapshot(copy) == before


@pytest.mark.parametrize('what', ['metrics.jsonl', 'tb'])
def test_a_file_in_the_way_is_one_line(what, copy, no_eval):
  """metrics.jsonl made a folder, tb/ made a file (by hand, a sync tool)."""
  path = os.path.join(copy, what)
  if what == 'tb':
    shutil.rmtree(path)
    open(path, 'w').close()
  else:
    os.remove(path)
    os.mkdir(path)
  with pytest.raises(UserError) as e:
    train_lib.train_and_evaluate(_longer(), copy)
  message = str(e.value)
  assert path in message and '\n' not in message, message
  assert committed(copy)[-1] <= RUN_STEPS + 1


def test_a_quoted_tilde_means_home(copy, tmp_path, monkeypatch, no_eval):
  home = tmp_path / 'home'
  home.mkdir()
  shutil.move(copy, home / 'w')
  monkeypatch.setenv('HOME', str(home))
  monkeypatch.chdir(tmp_path)
  train_lib.train_and_evaluate(_longer(), '~/w')
  assert committed(str(home / 'w'))[-1] == RUN_STEPS + 1
  assert not os.path.exists(tmp_path / '~')


@pytest.mark.parametrize('how', ['under_a_file', 'name_too_long'])
def test_an_impossible_workdir_path_is_one_line_before_anything(how, tmp_path):
  (tmp_path / 'f').write_text('x')
  workdir = str(tmp_path / 'f' / 'run') if how == 'under_a_file' else str(tmp_path / ('x' * 300))
  with pytest.raises(UserError, match='cannot create the workdir'):
    train_lib.train_and_evaluate(run_config_of(), workdir)
  assert os.listdir(tmp_path) == ['f'] and (tmp_path / 'f').read_text() == 'x'


@needs_mount
def test_resuming_on_a_read_only_mount_is_one_line(copy, tmp_path):
  view = ReadOnlyView(copy, tmp_path / 'ro')
  try:
    before = snapshot(copy)
    with pytest.raises(UserError, match='cannot write to the workdir .*Read-only file system'):
      train_lib.train_and_evaluate(_longer(), view.path)
    assert snapshot(copy) == before
  finally:
    view.close()
