"""Evaluation opens a run read-only: beside a running trainer nothing of its files
changes, and a damaged config.json is one line."""
import os

import numpy as np
import pytest

from eiw_jax.errors import UserError
from eiw_jax.train import runs
from eiw_jax.train.checkpoint import Checkpointer

from helpers import (corrupt, run_config_of, snapshot)


pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


def test_eval_leaves_a_running_trainers_files_alone(copy, capsys):
  # A trainer's unfinished save, and a newest step that cannot be read (yet).
  tmp = os.path.join(copy, 'checkpoints', '3.orbax-checkpoint-tmp-17')
  os.makedirs(os.path.join(tmp, 'default'))
  open(os.path.join(tmp, 'default', 'manifest.ocdbt'), 'w').close()
  corrupt(os.path.join(copy, 'checkpoints', '2'))
  before = snapshot(copy)
  _, variables, step = runs.load_for_eval(run_config_of(), copy)
  assert step == 1 and variables['params']
  assert 'step 2 is unreadable' in capsys.readouterr().err
  assert snapshot(copy) == before  # nothing cleaned, moved or written
  with Checkpointer(copy, read_only=True) as ckpt, pytest.raises(ValueError, match='read-only'):
    ckpt.save(5, {'x': np.zeros(1)})


def test_corrupt_config_json_seen_by_eval(copy):
  with open(os.path.join(copy, 'config.json'), 'w') as f:
    f.write('{"model": {"hidden": 8,')
  with pytest.raises(UserError, match='config.json is unreadable .*pass --config='):
    runs.saved_config(copy)
