import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))

# The scripts' persistent compilation cache (eiw_jax/cli.py): in tests, one cache
# under the temp dir shared by the test processes, never the user's ~/.cache.
os.environ.setdefault('EIW_JAX_COMPILATION_CACHE',
                      os.path.join(tempfile.gettempdir(), 'eiw_jax_tests_xla_cache'))


# Runs shared by the tests of the training runtime (tests/train/, test_numerics): each
# made once per test process, at first use.


@pytest.fixture(scope='session')
def ref(tmp_path_factory):
  """An uninterrupted run of helpers.ARGS (in-process): its workdir (one per test process)."""
  import helpers  # pylint: disable=g-import-not-at-top
  from eiw_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp('ref'))
  train_lib.train_and_evaluate(helpers.smoke_config(), workdir)
  return workdir


@pytest.fixture(scope='session')
def env(tmp_path_factory):
  """Subprocess environment sharing a compilation cache (reruns skip the compile)."""
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp('jax_cache')),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')


@pytest.fixture(scope='session')
def run(tmp_path_factory):
  """A finished 2-step run, checkpoints at steps 1 and 2 (with checksums).

  Test bits/dim and samples are not what these tests are about: their evaluation is
  skipped here and below (it would compile two more programs per run)."""
  import helpers  # pylint: disable=g-import-not-at-top
  from eiw_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  from eiw_jax.train import monitor as train_monitor  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp('run') / 'w')
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(train_monitor.Monitor, 'evaluate', helpers.no_eval_hook)
    train_lib.train_and_evaluate(helpers.run_config_of(), workdir)
  return workdir


@pytest.fixture
def no_eval(monkeypatch):
  import helpers  # pylint: disable=g-import-not-at-top
  from eiw_jax.train import monitor as train_monitor  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(train_monitor.Monitor, 'evaluate', helpers.no_eval_hook)


@pytest.fixture
def copy(run, tmp_path):
  workdir = str(tmp_path / 'w')
  shutil.copytree(run, workdir)
  return workdir
