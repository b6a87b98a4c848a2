"""Resuming after the advice we give (clipping, EMA, another learning rate), and
config.json written only once its checkpoints were accepted."""
import json
import os

import jax
import pytest

from eiw_jax import train as train_lib
from eiw_jax.errors import UserError

from helpers import (RUN_STEPS, assert_bitwise, committed, restore_run, run_config_of, snapshot)


pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


def test_resume_with_clipping_ema_and_another_lr(copy, capsys, no_eval):
  before = jax.device_get(restore_run(copy, run_config_of())[0])
  cfg = run_config_of(**{'optim.grad_clip': 1.0, 'optim.ema_decay': 0.9, 'optim.lr': 5e-4,
                         'optim.warmup_steps': 3})
  cfg.train.num_steps = RUN_STEPS + 1
  train_lib.train_and_evaluate(cfg, copy)
  err = capsys.readouterr().err
  lines = [l for l in err.splitlines() if 'was saved with' in l]
  assert lines == ['step 2 was saved with gradient clipping off and with the EMA of the '
                   'parameters off; restored what matches, the EMA starts from the parameters']
  assert 'optim.lr 0.001 -> 0.0005' in err and 'resumed from step 2' in err
  assert committed(copy)[-1] == RUN_STEPS + 1
  # Step 2 restored under the new settings: the flow's optimiser state kept bitwise.
  state, _ = restore_run(copy, cfg, step=2)
  assert_bitwise(state.opt_state[1], before.opt_state)
  assert_bitwise(state.ema_params, before.params)
  # ... and back: a checkpoint saved with clipping and EMA, resumed without.
  state, step = restore_run(copy, run_config_of())
  assert step == RUN_STEPS + 1 and state.ema_params is None
  assert jax.tree.structure(state.opt_state) == jax.tree.structure(before.opt_state)


def test_wrong_model_without_config_json_rewrites_nothing(copy, capsys, no_eval):
  os.remove(os.path.join(copy, 'config.json'))
  before = snapshot(copy)
  with pytest.raises(UserError, match=r'holds another model than the config \(params\..* is '
                     r'\(1, 8\) there, \(1, 16\) here\)'):
    train_lib.train_and_evaluate(run_config_of(**{'model.hidden': 16}), copy)
  assert snapshot(copy) == before
  train_lib.train_and_evaluate(run_config_of(), copy)  # the right command still works
  assert 'resumed from step 2' in capsys.readouterr().err
  assert json.load(open(os.path.join(copy, 'config.json')))['model']['hidden'] == 8
