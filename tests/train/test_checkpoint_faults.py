"""Damaged, half-written, stray and incompatible checkpoints: training and evaluation
fall back to the newest readable step, refuse what they cannot use in one line and
rewrite nothing (docs/RELIABILITY.md). The small-state cases use a pytree of two
arrays; the others a smoke run."""
import json
import os
import shutil

import jax.numpy as jnp
import pytest

from eiw_jax import train as train_lib
from eiw_jax.errors import UserError
from eiw_jax.train import checksums, runs
from eiw_jax.train.checkpoint import Checkpointer

from helpers import (ARGS, assert_bitwise, committed, corrupt, one_error, restore_run, run_config_of, run_script,
                     saved_params, smoke_config, snapshot)


pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


def _state(seed):
  return {'w': jnp.arange(12.0).reshape(3, 4) * seed, 'step': jnp.int32(seed)}


@pytest.fixture
def saved(tmp_path):
  """A workdir with committed (and checksummed) steps 1 and 2 of a small state."""
  workdir = str(tmp_path / 'w')
  with Checkpointer(workdir) as ckpt:
    for s in (1, 2):
      ckpt.save(s, _state(s))
  return workdir


def _step_dir(workdir, step):
  return os.path.join(workdir, 'checkpoints', str(step))


def _restore(workdir, **kwargs):
  with Checkpointer(workdir, max_to_keep=None) as ckpt:
    return ckpt.restore(_state(0), **kwargs)


def _flip_byte(workdir, step):
  files = sorted(os.path.join(d, n) for d, _, names in
                 os.walk(os.path.join(workdir, 'checkpoints', str(step), 'default'))
                 for n in names if os.sep + 'd' in d)
  path = max(files, key=os.path.getsize)
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([byte[0] ^ 0x10]))


def test_training_falls_back_past_a_corrupt_newest_checkpoint(ref, tmp_path, capsys):
  workdir = str(tmp_path / 'w')
  shutil.copytree(ref, workdir)
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '8'))
  corrupt(os.path.join(workdir, 'checkpoints', '10'))
  train_lib.train_and_evaluate(smoke_config(keep_checkpoints=1), workdir)
  err = capsys.readouterr().err
  assert 'checkpoint step 10 is unreadable' in err and 'resumed from step 9' in err, err
  assert committed(workdir) == [10]  # step 9 was deleted only once the new 10 was complete
  assert os.listdir(os.path.join(workdir, 'corrupt_checkpoints')) == ['10-1']
  assert_bitwise(saved_params(workdir), saved_params(ref))


def test_eval_falls_back_past_a_half_written_checkpoint(ref, env, tmp_path):
  workdir = str(tmp_path / 'w')
  shutil.copytree(ref, workdir)
  os.remove(os.path.join(workdir, 'checkpoints', '10', 'commit_success.txt'))
  proc = run_script(env, 'eval.py', f'--workdir={workdir}', '--mode=bpd')
  assert proc.returncode == 0, proc.stderr
  assert 'evaluating step 9' in proc.stdout and 'step 10 is unreadable' in proc.stderr
  assert json.load(open(os.path.join(workdir, 'eval', 'bpd.json')))['bpd'] > 0


def test_incompatible_workdir_is_refused_and_left_unchanged(ref, env, tmp_path):
  workdir = str(tmp_path / 'w')
  shutil.copytree(ref, workdir)
  before = snapshot(workdir)
  proc = run_script(env, 'train.py', *ARGS, f'--workdir={workdir}', '--config.model.hidden=16')
  assert proc.returncode == 2
  line = one_error(proc.stderr)
  assert 'model.hidden=8' in line and 'model.hidden=16' in line and '--workdir' in line
  assert snapshot(workdir) == before


@pytest.mark.parametrize('layout', ['empty', 'unfinished_save'])
def test_eval_without_a_checkpoint_writes_nothing(tmp_path, layout):
  workdir = tmp_path / 'w'
  workdir.mkdir()
  if layout == 'unfinished_save':
    (workdir / 'checkpoints' / '2.orbax-checkpoint-tmp-1').mkdir(parents=True)
  before = snapshot(str(workdir))
  with pytest.raises(UserError, match='no checkpoint in .*; train first'):
    runs.load_for_eval(smoke_config(), str(workdir))
  assert snapshot(str(workdir)) == before


def test_checksums_written_for_every_committed_step(saved):
  table = json.load(open(os.path.join(_step_dir(saved, 2), checksums.FILENAME)))
  assert 'commit_success.txt' in table and any('/d/' in k for k in table)


def test_step_without_checksums_restores_unverified(saved):
  os.remove(os.path.join(_step_dir(saved, 2), checksums.FILENAME))  # saved by older code
  state, step = _restore(saved)
  assert step == 2 and int(state['step']) == 2


def test_unreadable_checksum_file_falls_back(saved, capsys):
  with open(os.path.join(_step_dir(saved, 2), checksums.FILENAME), 'w') as f:
    f.write('[1, 2')
  assert _restore(saved)[1] == 1
  assert 'checksums.json is unreadable' in capsys.readouterr().err


def test_missing_data_file_falls_back(saved, capsys):
  table = json.load(open(os.path.join(_step_dir(saved, 2), checksums.FILENAME)))
  os.remove(os.path.join(_step_dir(saved, 2), next(k for k in sorted(table) if '/d/' in k)))
  assert _restore(saved)[1] == 1
  assert 'checksum mismatch' in capsys.readouterr().err


def test_grown_data_file_falls_back(saved, capsys):
  table = json.load(open(os.path.join(_step_dir(saved, 2), checksums.FILENAME)))
  with open(os.path.join(_step_dir(saved, 2), next(k for k in sorted(table) if '/d/' in k)),
            'ab') as f:
    f.write(b'\0')
  assert _restore(saved)[1] == 1
  assert 'bytes,' in capsys.readouterr().err


def test_explicit_damaged_step_is_an_error_not_a_fallback(saved):
  _flip_first_data_byte(saved, 2)
  with pytest.raises(UserError, match=r'step 2 .* is unreadable .*committed: \[1, 2\]'):
    _restore(saved, step=2)


def _flip_first_data_byte(workdir, step):
  table = json.load(open(os.path.join(_step_dir(workdir, step), checksums.FILENAME)))
  path = os.path.join(_step_dir(workdir, step), next(k for k in sorted(table) if '/d/' in k))
  data = bytearray(open(path, 'rb').read())
  data[len(data) // 2] ^= 1
  open(path, 'wb').write(bytes(data))


def test_stray_files_in_checkpoints_are_ignored(saved):
  open(os.path.join(saved, 'checkpoints', 'notes.txt'), 'w').close()
  os.makedirs(os.path.join(saved, 'checkpoints', 'latest'))
  os.makedirs(os.path.join(saved, 'checkpoints', '07'))  # not a step name orbax writes
  state, step = _restore(saved)
  assert step == 2 and int(state['step']) == 2


def test_same_step_damaged_twice_keeps_both_copies(saved):
  for n in (1, 2):
    _flip_first_data_byte(saved, 2)
    assert _restore(saved)[1] == 1
    with Checkpointer(saved) as ckpt:  # the run goes on and saves step 2 again
      ckpt.save(2, _state(2))
  assert sorted(os.listdir(os.path.join(saved, 'corrupt_checkpoints'))) == ['2-1', '2-2']


def test_read_only_checkpointer_never_creates_directories(tmp_path):
  workdir = tmp_path / 'w'
  with Checkpointer(str(workdir), read_only=True) as ckpt:
    assert ckpt.restore(_state(0)) is None
  assert not workdir.exists()


def test_config_json_that_is_a_directory(tmp_path):
  workdir = tmp_path / 'w'
  (workdir / 'config.json').mkdir(parents=True)
  with pytest.raises(UserError, match='config.json is unreadable'):
    train_lib.train_and_evaluate(smoke_config(), str(workdir))


def test_saved_config_that_is_not_an_object(tmp_path):
  (tmp_path / 'config.json').write_text('[1, 2, 3]')
  with pytest.raises(UserError, match='config.json is unreadable'):
    runs.saved_config(str(tmp_path))


def test_flipped_bytes_fall_back_to_the_previous_checkpoint(copy, capsys):
  assert all(checksums.has(os.path.join(copy, 'checkpoints', str(s))) for s in (1, 2))
  _flip_byte(copy, 2)
  state, step = restore_run(copy, run_config_of())
  assert step == 1
  assert 'step 2 is unreadable (ValueError: checksum mismatch' in capsys.readouterr().err
  assert os.listdir(os.path.join(copy, 'corrupt_checkpoints')) == ['2-1']
  assert_bitwise(state.params, restore_run(copy, run_config_of(), step=1)[0].params)


@pytest.mark.parametrize('which', ['newest', 'between'])
def test_a_step_that_lost_its_checksums_is_flagged(which, saved, capsys):
  """checksums.json deleted (and a byte flipped) while the other steps keep theirs."""
  with Checkpointer(saved) as ckpt:
    ckpt.save(3, _state(3))
  lost = 3 if which == 'newest' else 2
  os.remove(os.path.join(_step_dir(saved, lost), checksums.FILENAME))
  if which == 'between':
    _flip_first_data_byte(saved, 3)  # the newest fails its checksums: 2 is next
  _, step = _restore(saved)
  assert step == lost
  lines = [l for l in capsys.readouterr().err.splitlines() if 'has no checksums.json' in l]
  others = [s for s in (1, 2, 3) if s != lost]
  assert len(lines) == 1 and f'step {lost} has no checksums.json although steps {others}' in \
      lines[0] and 'restoring it unverified' in lines[0], lines
