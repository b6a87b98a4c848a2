"""Non-finite steps: training stops exactly after train.max_nonfinite_steps of them
in a row, keeps the last good checkpoint, and its advice fits the cause."""

import pytest

from eiw_jax import train as train_lib
from eiw_jax.errors import UserError
from eiw_jax.train import loop
from eiw_jax.train.checkpoint import Checkpointer

from helpers import (assert_bitwise, committed, run_config_of, smoke_config)


def test_nonfinite_steps_stop_exactly_and_keep_the_last_good_checkpoint(tmp_path):
  # lr = 1e20: step 1 is finite, its update overflows every later step.
  cfg = smoke_config(max_nonfinite_steps=3, log_every=100, eval_every=100)
  cfg.optim.lr = 1e20
  workdir = str(tmp_path / 'w')
  with pytest.raises(UserError) as e:
    train_lib.train_and_evaluate(cfg, workdir)
  msg = str(e.value)
  assert msg.startswith('stopped at step 4: 3 non-finite steps in a row') and '\n' not in msg
  assert '--config.optim.lr' in msg
  assert committed(workdir) == [1, 2, 3]  # nothing written for the stopping step
  trainer = train_lib.Trainer(cfg)
  with Checkpointer(workdir) as ckpt:
    s1, s3 = (ckpt.restore(trainer.abstract_state(), step=s)[0] for s in (1, 3))
  assert_bitwise((s1.params, s1.opt_state), (s3.params, s3.opt_state))
  assert (int(s3.nonfinite_streak), int(s3.nonfinite_total)) == (2, 2)


def test_the_nonfinite_advice_is_resumable_and_bound_zero_refused():
  with pytest.raises(UserError, match=r'model.log_scale_bound must be > 0.*=2.0'):
    train_lib.Trainer(run_config_of(**{'model.log_scale_bound': 0.0}))


def test_nonfinite_advice_fits_the_cause():
  with pytest.raises(UserError, match='lower --config.optim.lr or set --config.optim.grad_clip'):
    loop._check_streak(7, 3, 3)  # finite until step 4: the step size is suspect
  with pytest.raises(UserError, match='every step was non-finite .* whatever the learning rate'):
    loop._check_streak(3, 3, 3)  # never finite: lr and clipping would not help
  loop._check_streak(3, 2, 3)
