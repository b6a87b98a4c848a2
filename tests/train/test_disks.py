"""Full and read-only disks, on real file systems: a tmpfs of a few pages (full disk,
no inodes left) and read-only bind mounts (the tests skip where this process may not
mount; tests/train/test_workdir.py simulates the same errors). Every write of
train.py and eval.py is one line, nothing half-written, nothing of the run changed."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from eiw_jax import train as train_lib
from eiw_jax.errors import UserError
from eiw_jax.train import evaluate, files, workdir as workdir_lib

from helpers import (ARGS, ROOT, ReadOnlyView, Tmpfs, committed, needs_mount, one_error,
                     run_config_of, snapshot)


pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


@pytest.fixture
def mounts():
  made = []
  yield made
  for m in reversed(made):
    m.close()


@needs_mount
@pytest.mark.parametrize('full', ['no_space', 'no_inodes'])
@pytest.mark.parametrize('workdir_is', ['new', 'a_finished_run'])
def test_a_full_disk_at_the_start_is_one_line_and_leaves_nothing(full, workdir_is, copy,
                                                                 tmp_path, mounts):
  disk = Tmpfs(tmp_path / 'disk', size='4m', inodes=None if full == 'no_space' else 400)
  mounts.append(disk)
  workdir = os.path.join(disk.path, 'w')
  if workdir_is == 'a_finished_run':
    shutil.copytree(copy, workdir)
  else:
    os.mkdir(workdir)
  if full == 'no_space':
    disk.fill()
  else:  # take the inodes that are left
    for i in range(1000):
      try:
        open(os.path.join(disk.path, f'f{i}'), 'w').close()
      except OSError:
        break
  before = snapshot(workdir)
  with pytest.raises(UserError) as e:
    train_lib.train_and_evaluate(run_config_of(), workdir)
  message = str(e.value)
  assert 'No space left on device' in message and '\n' not in message, message
  assert snapshot(workdir) == before  # no empty train.lock, no config.json, nothing


@needs_mount
def test_a_record_that_does_not_fit_is_cut_off_again(tmp_path, mounts):
  disk = Tmpfs(tmp_path / 'disk', size='8k')
  mounts.append(disk)
  path = os.path.join(disk.path, 'metrics.jsonl')
  whole = ('{"step": 1, "bpd": 5.0}\n' * 170)[:4095] + '\n'  # most of one page
  open(path, 'w').write(whole)
  disk.fill()
  with pytest.raises(OSError, match='No space left'):
    files.append_line(path, json.dumps({'step': 2, 'bpd': 4.0, 'pad': 'x' * 200}))
  assert open(path).read() == whole
  with pytest.raises(OSError, match='No space left'):  # nor a new file left half-written
    files.write_text(os.path.join(disk.path, 'config.json'), 'x' * 10000)
  assert sorted(os.listdir(disk.path)) == ['filler', 'metrics.jsonl']


@needs_mount
def test_eval_on_a_full_disk_leaves_no_partial_file(copy, tmp_path, mounts):
  disk = Tmpfs(tmp_path / 'disk', size='4k')  # one page: the first grid fits, not the rest
  mounts.append(disk)
  out = os.path.join(disk.path, 'out')
  cfg = run_config_of()
  cfg.eval.temperatures = [0.0, 0.5, 0.7, 1.0]
  with pytest.raises(UserError) as e:
    evaluate.run_mode(cfg, copy, 'samples', output_dir=out)
  message = str(e.value)
  assert 'No space left on device' in message and '--output_dir' in message, message
  assert os.listdir(out) == []  # no PNG, no JSON, no staging folder


@needs_mount
@pytest.mark.parametrize('given', ['fallback', 'output_dir'])
def test_eval_of_a_read_only_run_writes_elsewhere(given, copy, tmp_path, mounts, capsys,
                                                 monkeypatch):
  view = ReadOnlyView(copy, tmp_path / 'ro')
  mounts.append(view)
  monkeypatch.setattr('tempfile.tempdir', str(tmp_path / 'temp'))
  before = snapshot(copy)
  out = str(tmp_path / 'mine') if given == 'output_dir' else None
  result = evaluate.run_mode(None, view.path, 'bpd', output_dir=out)
  where = out or evaluate.fallback_dir(view.path)
  assert json.load(open(os.path.join(where, 'bpd.json'))) == result and result['bpd'] > 0
  err = capsys.readouterr().err
  if given == 'fallback':
    assert where.startswith(str(tmp_path / 'temp'))
    assert f'cannot write to {view.path}/eval (Read-only file system); writing the results ' \
           f'to {where} instead' in err
  else:
    assert 'cannot write' not in err
  assert snapshot(copy) == before


@needs_mount
def test_a_disk_filling_mid_run_is_one_line_then_resumes(copy, env, tmp_path, mounts, no_eval):
  """A real train.py until another writer fills the disk; then, space freed, the same
  run resumes (in-process, to save a start-up)."""
  disk = Tmpfs(tmp_path / 'disk', size='8m')
  mounts.append(disk)
  workdir = os.path.join(disk.path, 'w')
  shutil.copytree(copy, workdir)
  proc = subprocess.Popen([sys.executable, 'train.py', *ARGS, f'--workdir={workdir}',
                           '--config.train.num_steps=100000', '--config.train.eval_every=100000'],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  t0 = time.time()
  while not committed(workdir) or committed(workdir)[-1] < 4:
    assert proc.poll() is None and time.time() - t0 < 240, proc.communicate()
    time.sleep(0.05)
  disk.fill()
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 2, err
  line = one_error(err)
  assert 'No space left on device' in line and 'rerun the same command' in line, line
  assert 'orbax' not in err and not any(l[:1] in 'EWI' and l[1:5].isdigit()
                                        for l in err.splitlines()), err  # no absl log lines
  assert not os.path.exists(os.path.join(workdir, workdir_lib.FILENAME))
  os.remove(os.path.join(disk.path, 'filler'))
  saved = committed(workdir)[-1]
  cfg = run_config_of()
  cfg.train.update(num_steps=saved + 2, checkpoint_every=1)
  train_lib.train_and_evaluate(cfg, workdir)
  assert committed(workdir)[-1] == saved + 2


def test_another_users_run_is_refused_or_evaluated_elsewhere(copy, env, tmp_path):
  """Real processes without root's right to ignore permissions (setpriv drops it), on a
  run owned by another user: train.py is one line; eval.py evaluates it and writes its
  results under the temp dir, saying where."""
  if os.geteuid() != 0 or not shutil.which('setpriv'):
    pytest.skip('needs root and setpriv to act as another user')
  for folder, _, names in os.walk(copy):
    for name in [folder] + [os.path.join(folder, n) for n in names]:
      os.chown(name, 65534, 65534)
  before = snapshot(copy)
  env = dict(env, TMPDIR=str(tmp_path))
  drop = ['setpriv', '--bounding-set=-dac_override,-dac_read_search', sys.executable]
  train = subprocess.run(drop + ['train.py', *ARGS, f'--workdir={copy}'], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=240)
  assert train.returncode == 2
  assert 'Permission denied' in one_error(train.stderr)
  ev = subprocess.run(drop + ['eval.py', f'--workdir={copy}', '--mode=bpd'], cwd=ROOT,
                      env=env, capture_output=True, text=True, timeout=240)
  assert ev.returncode == 0, ev.stderr
  where = os.path.join(str(tmp_path), 'eiw_jax_eval', copy.strip('/').replace('/', '_'))
  assert f'(Permission denied); writing the results to {where} instead' in ev.stderr
  assert json.load(open(os.path.join(where, 'bpd.json')))['bpd'] > 0
  assert snapshot(copy) == before
