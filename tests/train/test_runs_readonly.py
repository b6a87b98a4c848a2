"""Evaluation opens a run read-only: beside a running trainer nothing of its files
changes, and a damaged config.json is one line."""
import os

import numpy as np
import pytest

from eiw_jax.errors import UserError
from eiw_jax.train import runs
from eiw_jax.train.checkpoint import Checkpointer

from helpers import corrupt, one_error, run_config_of, run_script, snapshot


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


def test_an_edited_config_json_is_one_line_from_eval(copy, env):
  """A real eval.py: the checkpoints are intact but hold another model than the edited
  config.json says; stderr is that one line (no orbax or asyncio traceback)."""
  path = os.path.join(copy, 'config.json')
  text = open(path).read()
  assert '"hidden": 8,' in text
  open(path, 'w').write(text.replace('"hidden": 8,', '"hidden": 16,'))
  before = snapshot(copy)
  proc = run_script(env, 'eval.py', f'--workdir={copy}', '--mode=bpd')
  assert proc.returncode == 2
  assert [l for l in proc.stderr.splitlines() if l.strip()] == [one_error(proc.stderr)]
  line = one_error(proc.stderr)
  assert 'holds another model than the config' in line and '(1, 8) there, (1, 16) here' in line
  assert 'unreadable' not in line and snapshot(copy) == before


def test_changed_settings_are_named_once(copy, capfd):
  """As eval.py shows absl's log (INFO and up on stderr), the note is still one line."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.use_absl_handler()
  old = logging.get_verbosity()
  logging.set_verbosity(logging.INFO)
  try:
    runs.load_for_eval(run_config_of(**{'optim.lr': 5e-4}), copy)
  finally:
    logging.set_verbosity(old)
  err = capfd.readouterr().err
  assert err.count('restored under changed settings') == 1, err
  assert 'optim.lr 0.001 -> 0.0005' in err


def test_an_eval_seed_out_of_range_is_one_line_before_anything(copy):
  from eiw_jax.train import evaluate  # pylint: disable=g-import-not-at-top
  before = snapshot(copy)
  with pytest.raises(UserError, match=r'the seed must be an integer in 0\.\.9223372036854775807, '
                     r'got 18446744073709551616; set --seed=0'):
    evaluate.run_mode(None, copy, 'bpd', seed=2**64)
  assert snapshot(copy) == before
