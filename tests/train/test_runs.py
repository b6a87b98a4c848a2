"""A run saved by the package layout before issue 28 (tests/fixtures/legacy_run, written
by its make_legacy_run.py at commit 9983eb7): it evaluates to the numbers that code
computed and resumes to the parameters that code reached."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

import eiw_jax
from eiw_jax import data
from eiw_jax import train as train_lib
from eiw_jax.train import runs

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'fixtures', 'legacy_run')


@pytest.fixture(scope='module')
def expected():
  with open(os.path.join(FIXTURE, 'expected.json')) as f:
    return json.load(f)


def _log_prob(workdir):
  config = runs.saved_config(workdir)
  model, variables, step = runs.load_for_eval(config, workdir)
  images = data.load_split(config.data, 'test').images[:16]
  lp = eiw_jax.log_prob(model, variables, images, jax.random.key(7))
  perms = [np.asarray(i['perm']).tolist() for i in eiw_jax.shuffle_info(model, variables)]
  return step, np.asarray(lp, np.float64), perms, variables


def test_a_saved_run_evaluates_to_the_same_numbers(tmp_path, expected):
  workdir = shutil.copytree(os.path.join(FIXTURE, 'run'), tmp_path / 'run')
  step, lp, perms, _ = _log_prob(str(workdir))
  want = expected['at_step_2']
  assert step == want['step'] == 2
  np.testing.assert_allclose(lp, want['log_prob'], rtol=1e-6)
  assert perms == want['perm']


def test_a_saved_run_resumes_to_the_same_parameters(tmp_path):
  workdir = str(shutil.copytree(os.path.join(FIXTURE, 'run'), tmp_path / 'run'))
  config = runs.saved_config(workdir)
  config.train.update(num_steps=4, eval_every=4)
  train_lib.train_and_evaluate(config, workdir)
  step, _, _, variables = _log_prob(workdir)
  assert step == 4
  want = np.load(os.path.join(FIXTURE, 'params_at_step_4.npz'))
  got = {'/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(leaf)
         for path, leaf in jax.tree_util.tree_leaves_with_path(variables['params'])}
  assert sorted(got) == sorted(want.files)
  for name in want.files:
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)
  # The Shuffle counts its updates from here on: the count restored as the step, then two.
  consts = variables['consts']['flow']['shuffle_0']
  assert int(consts['updates']) == 4
