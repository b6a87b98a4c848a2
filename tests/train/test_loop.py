"""The pipeline end to end on the smoke config and tiny generated data: train,
checkpoint, resume, evaluate; and the command line's errors."""
import functools
import json
import os
import subprocess
import sys
import threading

import chex
import jax
import numpy as np
import pytest

from eiw_jax.train import runs, stored_step
from eiw_jax import train as train_lib
from eiw_jax.train import state as state_lib
from eiw_jax.train.config import base_config
from eiw_jax.train.recipes import smoke
from helpers import ynn_fusions

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def smoke_config(**train):
  cfg = smoke(base_config(name='synthetic', image_size=8, channels=1, batch_size=8,
                          train_steps=4, num_scales=2, num_steps=1))
  cfg.data.update(source='synthetic', num_synthetic=64, augment='flip')
  # The resume test below crosses the fine-tuning boundary after resuming at step 4.
  cfg.optim.update(finetune_after=5, finetune_lr=1e-4)
  cfg.train.update(train)
  return cfg


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run'))
  result = train_lib.train_and_evaluate(smoke_config(), workdir)
  return workdir, result


def test_training_writes_metrics_checkpoints_and_samples(trained):
  workdir, result = trained
  lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert [l['step'] for l in lines] == [2, 4]
  assert all(np.isfinite(l['bpd']) and l['bpd'] > 0 for l in lines)
  assert 'test_bpd' in lines[-1] and result['test_bpd'] == lines[-1]['test_bpd']
  # The Shuffle's state per transition: set changes since the last log, Q's entropy.
  assert all(l['split_changes_1'] in (0, 1, 2) and 0 < l['q_entropy_1'] <= np.log(16) + 1e-5
             for l in lines)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['0', '2', '4']  # 0: the init
  assert os.path.exists(os.path.join(workdir, 'samples', 'step_00000004.png'))
  assert os.path.exists(os.path.join(workdir, 'config.json'))
  assert os.listdir(os.path.join(workdir, 'tb'))


def test_resume_continues_and_matches_uninterrupted(trained, tmp_path, capsys):
  workdir, _ = trained
  # Continue the 4-step run to 6 steps, and compare with a fresh 6-step run.
  train_lib.train_and_evaluate(smoke_config(num_steps=6), workdir)
  assert 'resumed from step 4' in capsys.readouterr().err
  fresh = str(tmp_path / 'fresh')
  train_lib.train_and_evaluate(smoke_config(num_steps=6), fresh)
  _, resumed_vars, step_a = runs.load_for_eval(smoke_config(num_steps=6), workdir)
  _, fresh_vars, step_b = runs.load_for_eval(smoke_config(num_steps=6), fresh)
  assert step_a == step_b == 6
  for a, b in zip(jax.tree.leaves(resumed_vars), jax.tree.leaves(fresh_vars)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


def test_a_glow_trainers_step_keeps_xlas_default_kernels_on_cpu(trained):
  """The small Glow ran faster with XLA's default YNNPACK fusions (xla_options); its
  compiled step (kept per process) uses them (a DenseFlow's does not:
  tests/test_xla_options.py)."""
  compiled = list(train_lib.Trainer(smoke_config())._compiled.values())  # pylint: disable=protected-access
  assert compiled
  for program in compiled:
    assert ynn_fusions(program.compiled) > 0


def test_max_minutes_stops_at_a_logged_step_evaluates_saves_and_resumes(tmp_path, capsys):
  workdir = str(tmp_path / 'budget')
  train_lib.train_and_evaluate(smoke_config(num_steps=6, max_minutes=1e-9), workdir)
  assert 'train.max_minutes=1e-09 reached: stopped at step 2 of 6' in capsys.readouterr().err
  lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert [l['step'] for l in lines] == [2] and 'test_bpd' in lines[0]
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['0', '2']
  train_lib.train_and_evaluate(smoke_config(num_steps=6), workdir)  # no limit: on to the end
  assert 'resumed from step 2' in capsys.readouterr().err
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4', '6']


def _run(*args):
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)


def test_schedule_warms_up_then_fine_tunes():
  # Adamax's update with a constant gradient of ones is -lr(t) exactly (after bias
  # correction m = g and u = |g|), so the updates read out the schedule.
  cfg = smoke_config().optim
  cfg.update(lr=1e-3, warmup_steps=4, finetune_after=6, finetune_lr=2e-5)
  opt = train_lib.make_optimizer(cfg)
  params = {'w': np.zeros(3, np.float32)}
  state, rates = opt.init(params), []
  for _ in range(8):
    updates, state = opt.update({'w': np.ones(3, np.float32)}, state, params)
    rates.append(-float(updates['w'][0]))
  expected = [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3, 2e-5, 2e-5]
  np.testing.assert_allclose(rates, expected, rtol=1e-5)
  cfg.finetune_after = 0  # never
  opt = train_lib.make_optimizer(cfg)
  state = opt.init(params)
  for _ in range(8):
    updates, state = opt.update({'w': np.ones(3, np.float32)}, state, params)
  np.testing.assert_allclose(-float(updates['w'][0]), 1e-3, rtol=1e-5)


def test_eval_cli_on_a_workdir(trained):
  workdir, _ = trained
  proc = _run('eval.py', f'--workdir={workdir}', '--mode=bpd')
  assert proc.returncode == 0, proc.stderr
  result = json.load(open(os.path.join(workdir, 'eval', 'bpd.json')))
  assert result['bpd'] > 0 and json.loads(proc.stdout[proc.stdout.index('{'):]) == result


def test_cli_errors_are_one_line_exit_2(tmp_path):
  workdir = tmp_path / 'w'
  cases = [
      # unknown config key (typo in an override)
      ('train.py', '--config=configs/fashion_mnist.py:smoke', f'--workdir={workdir}',
       '--config.optim.lrr=1'),
      # missing dataset
      ('train.py', '--config=configs/cifar10.py:smoke', f'--workdir={workdir}',
       f'--config.data.dir={tmp_path}/nothing'),
      # invalid hyperparameter
      ('train.py', '--config=configs/fashion_mnist.py:smoke', f'--workdir={workdir}',
       '--config.model.kl_weight=-1', '--config.data.source=synthetic'),
      # eval without a checkpoint
      ('eval.py', '--config=configs/fashion_mnist.py:smoke', f'--workdir={workdir}'),
  ]
  for args in cases:
    proc = _run(*args)
    assert proc.returncode == 2, (args, proc.stderr)
    errors = [l for l in proc.stderr.splitlines() if l.startswith('error: ')]
    assert len(errors) == 1, (args, proc.stderr)
    assert 'Traceback' not in proc.stderr
  assert not workdir.exists() or not os.listdir(workdir)


def test_trainer_init_compiled_for_one_run_matches_a_default_compile():
  """The trainer compiles its init with fewer LLVM passes on CPU (xla_options.run_once);
  the state must be a default compile's, to float32 rounding."""
  cfg = smoke_config()
  trainer = train_lib.Trainer(cfg)
  batch = trainer.global_batch(
      np.random.default_rng(0).integers(0, 256, (8, 8, 8, 1), dtype=np.int32))
  default = jax.jit(functools.partial(state_lib.init_state, trainer.model, trainer.optimizer,
                                      cfg.optim.ema_decay > 0))
  key = jax.random.key(3)
  plain = lambda tree: jax.tree.map(
      lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
      else x, tree)
  chex.assert_trees_all_close(plain(trainer._init(key, batch)), plain(default(key, batch)),  # pylint: disable=protected-access
                              rtol=1e-5, atol=1e-6)


def test_trainer_init_lowers_the_step_beside_the_init_compile(monkeypatch):
  """Trainer.init traces and lowers the training step in another thread while the
  init program compiles; compile_step then compiles that module without tracing
  the step again, drops it, and the step trains."""
  lowered_in = []
  lower = stored_step.lower

  def spy(*args, **kwargs):
    lowered_in.append(threading.current_thread().name)
    return lower(*args, **kwargs)

  monkeypatch.setattr(stored_step, 'lower', spy)
  cfg = smoke_config()
  cfg.optim.update(warmup_steps=3)  # a config no other test compiled in this process
  trainer = train_lib.Trainer(cfg)
  batch = trainer.global_batch(
      np.random.default_rng(0).integers(0, 256, (8, 8, 8, 1), dtype=np.int32))
  state = trainer.init(jax.random.key(0), batch)
  assert len(lowered_in) == 1 and lowered_in[0] != threading.main_thread().name
  step = trainer.compile_step(state)
  assert len(lowered_in) == 1 and not trainer._lowered  # pylint: disable=protected-access
  _, metrics = step(state, batch)
  assert np.isfinite(float(metrics['loss']))


def test_a_step_keeps_the_state_structure_with_a_shuffle_that_has_no_constants():
  """A continuous flow with the random Shuffle starts with no 'flow' constants; a
  step must not add an empty group (its checkpoints then no longer matched the
  abstract state, and could be neither resumed nor evaluated). The step is compiled
  ahead of time, so that it refuses a state of another structure."""
  from configs import fashion_mnist  # pylint: disable=g-import-not-at-top
  cfg = fashion_mnist.get_config('ffjord_smoke')
  cfg.model.update(shuffle=True, shuffle_mode='random')
  cfg.data.update(source='synthetic', batch_size=2)
  trainer = train_lib.Trainer(cfg)
  step = trainer._step.lower(trainer.abstract_state(), trainer.abstract_batch()).compile()  # pylint: disable=protected-access
  d = cfg.data
  batch = trainer.global_batch(np.random.default_rng(0).integers(
      0, 256, (d.batch_size, d.image_size, d.image_size, d.channels), dtype=np.int32))
  state = trainer._init(jax.random.key(0), batch)  # pylint: disable=protected-access
  for _ in range(2):
    state, _ = step(state, batch)
  assert (jax.tree_util.tree_structure(state)
          == jax.tree_util.tree_structure(trainer.abstract_state()))
