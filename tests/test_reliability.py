"""Nothing lost, round two: evaluation beside a running trainer, resuming after
the advice we give, config.json written only once accepted, checksummed
checkpoints, one trainer per workdir, model values checked up front, storage
failures and damaged metrics as one line. All share one 2-step smoke run."""
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from eiw_jax.train import checksums, runs, monitor as train_monitor
from eiw_jax import train as train_lib
from eiw_jax.train import loop
from eiw_jax import cli
from eiw_jax.train import workdir as workdir_lib
from eiw_jax.train.checkpoint import Checkpointer
from eiw_jax.errors import UserError

from test_robustness import ROOT, _assert_bitwise, _committed, _corrupt, _snapshot, smoke_config

pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
STEPS = 2


def config(**changes):
  """The shared run's config; `changes` are dotted keys ('optim.lr')."""
  cfg = smoke_config(num_steps=STEPS)
  for key, value in changes.items():
    group, name = key.split('.')
    cfg[group][name] = value
  return cfg


def _no_eval(self, step, state):
  del self, step, state
  return {}


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A finished 2-step run, checkpoints at steps 1 and 2 (with checksums).

  Test bits/dim and samples are not what these tests are about: their evaluation is
  skipped here and below (it would compile two more programs per run)."""
  workdir = str(tmp_path_factory.mktemp('run') / 'w')
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(train_monitor.Monitor, 'evaluate', _no_eval)
    train_lib.train_and_evaluate(config(), workdir)
  return workdir


@pytest.fixture
def no_eval(monkeypatch):
  monkeypatch.setattr(train_monitor.Monitor, 'evaluate', _no_eval)


@pytest.fixture
def copy(run, tmp_path):
  workdir = str(tmp_path / 'w')
  shutil.copytree(run, workdir)
  return workdir


def _restore(workdir, cfg, step=None, **kwargs):
  trainer = train_lib.Trainer(cfg)
  with Checkpointer(workdir, max_to_keep=None, **kwargs) as ckpt:
    return ckpt.restore(trainer.abstract_state(), step=step,
                        adapters=trainer.restore_adapters())


# ------------------------------------------------- 1. evaluation is read-only


def test_eval_leaves_a_running_trainers_files_alone(copy, capsys):
  # A trainer's unfinished save, and a newest step that cannot be read (yet).
  tmp = os.path.join(copy, 'checkpoints', '3.orbax-checkpoint-tmp-17')
  os.makedirs(os.path.join(tmp, 'default'))
  open(os.path.join(tmp, 'default', 'manifest.ocdbt'), 'w').close()
  _corrupt(os.path.join(copy, 'checkpoints', '2'))
  before = _snapshot(copy)
  _, variables, step = runs.load_for_eval(config(), copy)
  assert step == 1 and variables['params']
  assert 'step 2 is unreadable' in capsys.readouterr().err
  assert _snapshot(copy) == before  # nothing cleaned, moved or written
  with Checkpointer(copy, read_only=True) as ckpt, pytest.raises(ValueError, match='read-only'):
    ckpt.save(5, {'x': np.zeros(1)})


# ----------------------------------------- 2. resume after the advice we give


def test_resume_with_clipping_ema_and_another_lr(copy, capsys, no_eval):
  before = jax.device_get(_restore(copy, config())[0])
  cfg = config(**{'optim.grad_clip': 1.0, 'optim.ema_decay': 0.9, 'optim.lr': 5e-4,
                  'optim.warmup_steps': 3})
  cfg.train.num_steps = STEPS + 1
  train_lib.train_and_evaluate(cfg, copy)
  err = capsys.readouterr().err
  lines = [l for l in err.splitlines() if 'was saved with' in l]
  assert lines == ['step 2 was saved with gradient clipping off and with the EMA of the '
                   'parameters off; restored what matches, the EMA starts from the parameters']
  assert 'optim.lr 0.001 -> 0.0005' in err and 'resumed from step 2' in err
  assert _committed(copy)[-1] == STEPS + 1
  # Step 2 restored under the new settings: the flow's optimiser state kept bitwise.
  state, _ = _restore(copy, cfg, step=2)
  _assert_bitwise(state.opt_state[1], before.opt_state)
  _assert_bitwise(state.ema_params, before.params)
  # ... and back: a checkpoint saved with clipping and EMA, resumed without.
  state, step = _restore(copy, config())
  assert step == STEPS + 1 and state.ema_params is None
  assert jax.tree.structure(state.opt_state) == jax.tree.structure(before.opt_state)


def test_the_nonfinite_advice_is_resumable_and_bound_zero_refused():
  with pytest.raises(UserError, match=r'model.log_scale_bound must be > 0.*=2.0'):
    train_lib.Trainer(config(**{'model.log_scale_bound': 0.0}))


# ------------------------- 3. config.json only after the checkpoints accepted


def test_wrong_model_without_config_json_rewrites_nothing(copy, capsys, no_eval):
  os.remove(os.path.join(copy, 'config.json'))
  before = _snapshot(copy)
  with pytest.raises(UserError, match='no readable checkpoint'):
    train_lib.train_and_evaluate(config(**{'model.hidden': 16}), copy)
  assert _snapshot(copy) == before
  train_lib.train_and_evaluate(config(), copy)  # the right command still works
  assert 'resumed from step 2' in capsys.readouterr().err
  assert json.load(open(os.path.join(copy, 'config.json')))['model']['hidden'] == 8


# ----------------------------------------------------------- 4. checksums


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


def test_flipped_bytes_fall_back_to_the_previous_checkpoint(copy, capsys):
  assert all(checksums.has(os.path.join(copy, 'checkpoints', str(s))) for s in (1, 2))
  _flip_byte(copy, 2)
  state, step = _restore(copy, config())
  assert step == 1
  assert 'step 2 is unreadable (ValueError: checksum mismatch' in capsys.readouterr().err
  assert os.listdir(os.path.join(copy, 'corrupt_checkpoints')) == ['2-1']
  _assert_bitwise(state.params, _restore(copy, config(), step=1)[0].params)


# ----------------------------------------------------- 5. one trainer a workdir


def test_second_trainer_is_refused_naming_the_first(copy):
  before = _snapshot(copy)
  with workdir_lib.Lock(copy):
    with pytest.raises(UserError) as e:
      train_lib.train_and_evaluate(config(), copy)
  message = str(e.value)
  assert f'pid {os.getpid()} on host {socket.gethostname()}' in message, message
  assert 'in use by another training run' in message and '\n' not in message
  assert _snapshot(copy) == before  # the lock file goes with its holder


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


# ------------------------------------------- 6. model values checked up front


@pytest.mark.parametrize('key,value,words', [
    ('model.hidden', 0, 'model.hidden must be an integer >= 1'),
    ('model.num_steps', 0, 'model.num_steps must be an integer >= 1'),
    ('model.shuffle_reduction', 0, 'model.shuffle_reduction must be an integer >= 1'),
    ('model.solver_layers', 0, 'model.solver_layers must be an integer >= 1'),
    ('model.log_scale_bound', 0.0, 'model.log_scale_bound must be > 0'),
    ('data.image_size', 0, 'data.image_size must be an integer >= 1'),
    ('data.num_synthetic', 4, 'data.batch_size=8 exceeds the 4 examples of the train split'),
], ids=['hidden', 'num_steps', 'shuffle_reduction', 'solver_layers', 'log_scale_bound',
        'image_size', 'batch_larger_than_dataset'])
def test_bad_model_values_are_one_line_before_the_workdir(key, value, words, tmp_path):
  workdir = tmp_path / 'w'
  with pytest.raises(UserError) as e:
    train_lib.train_and_evaluate(config(**{key: value}), str(workdir))
  assert words in str(e.value) and '\n' not in str(e.value), str(e.value)
  assert not workdir.exists()


# ---------------------------------------------- 7. storage and workdir faults


def test_workdir_that_is_a_file(tmp_path):
  (tmp_path / 'f').write_text('x')
  with pytest.raises(UserError, match='is a file, not a directory'):
    train_lib.train_and_evaluate(config(), str(tmp_path / 'f'))
  assert (tmp_path / 'f').read_text() == 'x'


def test_unwritable_workdir(tmp_path, monkeypatch):
  real_open = os.open

  def refuse(path, *args, **kwargs):
    if str(path).endswith(workdir_lib.FILENAME):
      raise OSError(errno.EROFS, 'Read-only file system', path)
    return real_open(path, *args, **kwargs)

  monkeypatch.setattr(os, 'open', refuse)
  with pytest.raises(UserError, match='cannot write to the workdir .*Read-only file system'):
    train_lib.train_and_evaluate(config(), str(tmp_path / 'w'))


def test_corrupt_config_json_seen_by_eval(copy):
  with open(os.path.join(copy, 'config.json'), 'w') as f:
    f.write('{"model": {"hidden": 8,')
  with pytest.raises(UserError, match='config.json is unreadable .*pass --config='):
    runs.saved_config(copy)


@pytest.mark.parametrize('where', ['metrics', 'checkpoint'])
def test_full_disk_is_one_line_and_resumable(where, copy, monkeypatch, no_eval):
  def full(*unused):
    raise OSError(errno.ENOSPC, 'No space left on device', where)

  if where == 'metrics':
    monkeypatch.setattr(train_monitor.Monitor, '_write', full)
  else:  # the first write after a save has committed
    monkeypatch.setattr(checksums, 'write', full)
  cfg = config()
  cfg.train.update(num_steps=STEPS + 2, log_every=1)
  with pytest.raises(UserError) as e:
    train_lib.train_and_evaluate(cfg, copy)
  message = str(e.value)
  assert f'No space left on device: {where}' in message and '\n' not in message
  assert 'rerun the same command' in message
  assert not os.path.exists(os.path.join(copy, workdir_lib.FILENAME))
  monkeypatch.undo()
  monkeypatch.setattr(train_monitor.Monitor, 'evaluate', _no_eval)
  train_lib.train_and_evaluate(cfg, copy)  # space freed: the rerun completes
  assert _committed(copy)[-1] == STEPS + 2


@pytest.mark.parametrize('when', ['between_saves', 'during_a_save'])
def test_checkpoints_deleted_mid_run(when, copy, monkeypatch, no_eval):
  real_log = train_monitor.Monitor.log
  delete_at = STEPS + 1 if when == 'between_saves' else STEPS + 2  # the save of 3 may be on

  def log_and_delete(self, step, *args):
    if step == delete_at:
      shutil.rmtree(os.path.join(copy, 'checkpoints'), ignore_errors=True)
    return real_log(self, step, *args)

  monkeypatch.setattr(train_monitor.Monitor, 'log', log_and_delete)
  cfg = config()
  cfg.train.update(num_steps=STEPS + 3, log_every=1, keep_checkpoints=1)  # orbax deletes 1, 2
  if when == 'between_saves':  # the next save recreates the directory
    train_lib.train_and_evaluate(cfg, copy)
    assert _committed(copy)[-1] == STEPS + 3
    return
  try:  # racing orbax's rename: it completes, or stops in one line
    train_lib.train_and_evaluate(cfg, copy)
  except UserError as e:
    assert '\n' not in str(e) and 'rerun the same command' in str(e)
  else:
    assert _committed(copy)[-1] == STEPS + 3


# ------------------------------------------------------- 8. damaged metrics


def test_torn_metrics_are_recovered_and_kept(tmp_path, capsys):
  path = tmp_path / 'metrics.jsonl'
  text = ('{"step": 1, "bpd": 5.0}\n{"step": 2, "bp{"step": 3, "bpd": 4.0}\n'
          '{"step": 4, "bpd": 3.5}{"step": 5, "bpd": 3.0}\n\x00\x00\x00\n{"step": 6, "b')
  path.write_text(text)
  train_monitor._truncate_metrics(str(path), 5)
  kept = [json.loads(l)['step'] for l in path.read_text().splitlines()]
  assert kept == [1, 3, 4, 5]
  assert (tmp_path / 'metrics.jsonl.damaged-1').read_text() == text
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'unreadable fragment' in err and 'damaged-1' in err


def test_whole_metrics_are_rewritten_silently(tmp_path, capsys):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "bpd": 5.0}\n{"step": 2, "bpd": 4.0}\n')
  train_monitor._truncate_metrics(str(path), 1)
  assert path.read_text() == '{"step": 1, "bpd": 5.0}\n'
  assert not capsys.readouterr().err and os.listdir(tmp_path) == ['metrics.jsonl']


# -------------------------------------------------------- 9. unknown keys


@pytest.mark.parametrize('override,words', [
    ('--config.optim.lrr=1', 'unknown config key optim.lrr; did you mean --config.optim.lr?'),
    ('--config.lrr=1', 'unknown config key lrr; did you mean --config.optim.lr?'),
    ('--config.foo=1', 'unknown config key foo; check the key against --config'),
], ids=['typo_in_a_group', 'group_left_out', 'unknown_top_level'])
def test_unknown_override_keys_are_named(override, words, monkeypatch, capsys):
  monkeypatch.chdir(ROOT)
  argv = ['train.py', '--config=configs/fashion_mnist.py:smoke', '--workdir=/tmp/x', override]
  monkeypatch.setattr(sys, 'argv', argv)  # as train.py sees it: overrides pre-registered
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=fv, lock_config=True)
  flags.DEFINE_string('workdir', None, '', flag_values=fv)
  with pytest.raises(SystemExit) as e:
    cli.parse_flags(argv, fv)
  assert e.value.code == 2
  assert capsys.readouterr().err == f'error: {words}\n'


def test_nonfinite_advice_fits_the_cause():
  with pytest.raises(UserError, match='lower --config.optim.lr or set --config.optim.grad_clip'):
    loop._check_streak(7, 3, 3)  # finite until step 4: the step size is suspect
  with pytest.raises(UserError, match='every step was non-finite .* whatever the learning rate'):
    loop._check_streak(3, 3, 3)  # never finite: lr and clipping would not help
  loop._check_streak(3, 2, 3)
