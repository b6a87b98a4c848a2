"""A run's history is never started over silently (train/history.py): a workdir whose
checkpoints are gone is refused in one line and left byte for byte; with
train.restart=True the old run is moved to restart-<n>/ first; a resume on changed
data says so."""
import json
import os
import shutil

import numpy as np
import pytest

from eiw_jax import data
from eiw_jax import train as train_lib
from eiw_jax.errors import UserError
from eiw_jax.train import history, loop
from eiw_jax.train import monitor as train_monitor

from helpers import RUN_STEPS, committed, metrics_of, run_config_of, snapshot


pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


def _make_gone(workdir, how):
  ckpt = os.path.join(workdir, 'checkpoints')
  shutil.rmtree(ckpt)
  if how == 'a_file':
    open(ckpt, 'w').close()
  elif how == 'a_dangling_link':  # its disk not mounted
    os.symlink(os.path.join(os.path.dirname(workdir), 'unmounted', 'checkpoints'), ckpt)
  elif how == 'emptied':
    os.mkdir(ckpt)


@pytest.mark.parametrize('how,words', [
    ('missing', 'checkpoints/ is missing'),
    ('a_file', 'checkpoints is a file, not a folder'),
    ('a_dangling_link', 'checkpoints is a link to '),
    ('emptied', 'checkpoints/ holds no complete checkpoint'),
])
def test_lost_checkpoints_are_refused_and_nothing_changes(how, words, copy, no_eval):
  _make_gone(copy, how)
  before = snapshot(copy)
  with pytest.raises(UserError) as e:
    train_lib.train_and_evaluate(run_config_of(), copy)
  message = str(e.value)
  assert '\n' not in message and words in message, message
  assert f'metrics.jsonl with 1 records up to step {RUN_STEPS}, config.json' in message
  assert '--config.train.restart=True' in message and 'restart-<n>' in message
  assert snapshot(copy) == before


def test_restart_keeps_the_old_run_and_starts_over(copy, capsys, no_eval, monkeypatch):
  _make_gone(copy, 'a_file')
  before = snapshot(copy)
  real_log, seen = train_monitor.Monitor.log, []

  def log(self, step, *args):  # step 0 is saved before the first record is written
    seen.append(committed(copy))
    return real_log(self, step, *args)

  monkeypatch.setattr(train_monitor.Monitor, 'log', log)
  cfg = run_config_of()
  cfg.train.restart = True
  train_lib.train_and_evaluate(cfg, copy)
  err = capsys.readouterr().err
  assert f'the old run is kept in {copy}/restart-1' in err and 'resumed' not in err
  assert snapshot(os.path.join(copy, 'restart-1')) == before  # all of it, byte for byte
  assert seen and seen[0][0] == 0 and committed(copy)[-1] == RUN_STEPS
  assert [r['step'] for r in metrics_of(copy)] == [RUN_STEPS]
  # The same command again resumes: restart never applies beside a checkpoint.
  train_lib.train_and_evaluate(cfg, copy)
  err = capsys.readouterr().err
  assert 'train.restart=True has no effect' in err and f'resumed from step {RUN_STEPS}' in err
  assert sorted(n for n in os.listdir(copy) if n.startswith('restart-')) == ['restart-1']


def test_a_run_killed_before_step_0_was_saved_may_start_again(copy):
  """config.json and an empty checkpoints/, no metrics: nothing to lose, no refusal."""
  shutil.rmtree(os.path.join(copy, 'checkpoints'))
  os.mkdir(os.path.join(copy, 'checkpoints'))
  os.remove(os.path.join(copy, 'metrics.jsonl'))
  before = snapshot(copy)
  history.check(copy, has_checkpoint=False, restart=False)
  assert snapshot(copy) == before


def test_a_resume_on_changed_data_says_so(copy, capsys, no_eval, monkeypatch):
  real = data.load_split

  def changed(dcfg, split):
    out = real(dcfg, split)
    if split == 'train':
      images = out.images.copy()
      images[0, 0, 0, 0] ^= 1
      return data.Split(images, out.labels)
    return out

  monkeypatch.setattr(loop.data, 'load_split', changed)
  cfg = run_config_of()
  train_lib.train_and_evaluate(cfg, copy)
  err = capsys.readouterr().err
  lines = [l for l in err.splitlines() if 'the data changed' in l]
  assert len(lines) == 1 and 'train split content' in lines[0], err
  assert f'from step {RUN_STEPS} on' in lines[0]
  train_lib.train_and_evaluate(cfg, copy)  # recorded now: said once
  assert 'the data changed' not in capsys.readouterr().err


def test_data_fingerprint_counts_and_hashes(tmp_path, capsys):
  a = data.Split(np.zeros((4, 2, 2, 1), np.uint8), None)
  b = data.Split(np.zeros((5, 2, 2, 1), np.uint8), None)
  history.check_data(str(tmp_path), {'train': a}, 0)
  history.check_data(str(tmp_path), {'train': b}, 3)
  err = capsys.readouterr().err
  assert 'train 4 -> 5 examples' in err and err.count('\n') == 1
  assert json.load(open(tmp_path / 'data.json'))['train']['examples'] == 5
