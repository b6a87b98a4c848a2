"""`train.init_from`: an EIW run started from a vanilla run's flow, its Shuffle fresh
at the identity, so its first evaluation is the source's bits/dim; a source of
another model refused in one line. End to end on a tiny Glow (a DenseFlow of any
size compiles for minutes here); DenseFlow's converted run (eiw_jax/convert) is
checked to differ from its EIW continuation by the Shuffle's variables only."""
import gzip
import os
import shutil

import jax
import numpy as np
import pytest

import eiw_jax
from eiw_jax import train as train_lib
from eiw_jax.convert import denseflow as convert_denseflow
from eiw_jax.errors import UserError
from eiw_jax.train import init_from, runs
from eiw_jax.train import monitor as train_monitor
from eiw_jax.train.config import base_config
from eiw_jax.train.recipes import smoke
from eiw_jax.train.trainer import Trainer

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'fixtures')


def tiny_config(shuffle: bool, **train):
  cfg = smoke(base_config(name='synthetic', image_size=8, channels=1, batch_size=4,
                          train_steps=1, num_scales=2, num_steps=1))
  cfg.model.shuffle = shuffle
  cfg.data.update(source="synthetic", num_synthetic=64)
  cfg.train.update(eval_every=1000, log_every=1000, checkpoint_every=1)
  cfg.train.update(train)
  return cfg


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  """A vanilla run, one step."""
  workdir = str(tmp_path_factory.mktemp('vanilla') / 'w')
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(train_monitor.Monitor, 'evaluate', lambda self, step, state: {})
    train_lib.train_and_evaluate(tiny_config(False, num_steps=1), workdir)
  return workdir


@pytest.fixture(scope='module')
def started(source, tmp_path_factory):
  """One step of the EIW run started from `source`, with the state that
  `init_from.load` returned (before the step) kept."""
  kept, load = [], init_from.load
  def keep(trainer, state):
    state, note = load(trainer, state)
    kept.append((trainer.model, jax.device_get(state), note))
    return state, note
  workdir = str(tmp_path_factory.mktemp('eiw') / 'w')
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(init_from, 'load', keep)
    mp.setattr(train_monitor.Monitor, 'evaluate', lambda self, step, state: {})
    train_lib.train_and_evaluate(tiny_config(True, num_steps=1, init_from=source), workdir)
  (model, state, note), = kept
  return workdir, model, state, note


def test_the_first_evaluation_is_the_sources(source, started):
  _, model, state, note = started
  source_model, source_vars, _ = eiw_jax.load_run(source)
  images = np.random.RandomState(0).randint(0, 256, (8, 8, 8, 1)).astype(np.int32)
  rng = jax.random.key(3)
  expected = eiw_jax.log_prob(source_model, source_vars, images, rng=rng)
  got = eiw_jax.log_prob(model, state.variables(), images, rng=rng)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  assert model.flow.shuffle and not source_model.flow.shuffle
  assert 'initialised from' in note and 'Shuffle parameters fresh' in note


def test_the_flow_is_copied_the_shuffle_fresh_the_optimiser_new(source, started):
  _, _, state, _ = started
  _, source_vars, _ = eiw_jax.load_run(source)
  old = init_from._leaves(source_vars['params'])
  new = init_from._leaves(state.params)
  shuffle = [k for k in new if '/shuffle_' in f'/{k}']
  assert shuffle and len(new) == len(old) + len(shuffle)
  for key, value in old.items():
    np.testing.assert_array_equal(new[key], value)
  for key, value in init_from._leaves(state.consts).items():
    if key.endswith('/order'):
      assert not np.any(value), key  # no order committed: the identity
  assert int(state.step) == 0
  moments = [x for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0]
  assert moments and all(not np.any(x) for x in moments)


def test_the_run_trains_on_and_resumes_without_the_source(source, started, tmp_path):
  workdir = started[0]
  config = runs.saved_config(workdir)
  assert config.train.init_from == source and config.model.shuffle
  assert runs.load_for_eval(config, workdir)[2] == 1
  # With a checkpoint there, init_from is not read again: the source may be gone.
  gone = tiny_config(True, num_steps=1, init_from=str(tmp_path / 'gone'))
  assert train_lib.train_and_evaluate(gone, workdir) == {}


def test_mismatched_sources_are_refused_in_one_line(source, tmp_path):
  cfg = tiny_config(True, init_from=str(tmp_path))
  with pytest.raises(UserError, match='no checkpoint there'):
    init_from.source_config(cfg, str(tmp_path / 'w'))
  cfg.train.init_from = source
  with pytest.raises(UserError, match="the run's own workdir"):
    init_from.source_config(cfg, source)
  cfg.data.num_bits = 5
  with pytest.raises(UserError, match='data.num_bits=8, this one 5'):
    init_from.source_config(cfg, str(tmp_path / 'w'))
  # Same images, other sizes: the first parameter that differs is named, and the
  # command refuses before the workdir exists.
  wider = tiny_config(True, num_steps=1, init_from=source)
  wider.model.hidden *= 2
  with pytest.raises(UserError, match=r'^train.init_from: params \S+ has shape .* start '
                     r'from a run of the same backbone and sizes$'):
    train_lib.train_and_evaluate(wider, str(tmp_path / 'w'))
  assert not os.path.exists(tmp_path / 'w')


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  """DenseFlow's tiny run (tests/fixtures) converted: a vanilla DenseFlow workdir at step 0."""
  root = tmp_path_factory.mktemp('init_from')
  run = root / 'denseflow_run'
  (run / 'check').mkdir(parents=True)
  shutil.copy(os.path.join(DATA, 'denseflow_tiny_run', 'args.pickle'), run / 'args.pickle')
  with gzip.open(os.path.join(DATA, 'denseflow_tiny_run', 'check', 'checkpoint.pt.gz')) as f:
    (run / 'check' / 'checkpoint.pt').write_bytes(f.read())
  workdir = root / 'converted'
  assert convert_denseflow.main([str(run), str(workdir)]) == 0
  return str(workdir)


def test_denseflow_continued_with_the_shuffle_adds_only_the_shuffles_variables(converted):
  config = runs.saved_config(converted)
  config.model.shuffle = True
  target = Trainer(config).abstract_state().variables(use_ema=False)
  source = Trainer(runs.saved_config(converted)).abstract_state().variables(use_ema=False)
  init_from.check_structure(target, source, converted)
  extra = set(init_from._leaves(target['params'])) - set(init_from._leaves(source['params']))
  assert extra and all(k.split('/')[1].startswith('shuffle_') for k in extra), extra


def test_a_source_whose_shuffle_moved_cannot_drop_it(converted):
  source = jax.device_get(eiw_jax.load_run(converted)[1])
  target = jax.tree.map(np.array, source)
  scores = np.array([0.0, 0.3, 0.0, 0.0])  # a committed order
  source['consts'] = {**source['consts'], 'flow': {**source['consts']['flow'],
                                                   'shuffle_0': {'order': scores}}}
  with pytest.raises(UserError, match='shuffle_0/order.*keep model.shuffle on'):
    init_from._check_dropped_orders(target, source, converted)
  source['consts']['flow']['shuffle_0']['order'] = np.zeros(4)  # never committed
  init_from._check_dropped_orders(target, source, converted)
