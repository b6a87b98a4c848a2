"""The training step stored as StableHLO beside the compilation cache (stored_step)."""
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eiw_jax.train import stored_step

REPLICATED = jax.sharding.SingleDeviceSharding(jax.devices()[0])


def step_fn(state, batch):
  """A toy step with the training state's kinds of leaves: a typed key, params, a count."""
  noise = jax.random.normal(jax.random.fold_in(state['rng'], state['step']), batch.shape)
  loss = jnp.mean((batch + noise) * state['params']['w'])
  new = dict(state, step=state['step'] + 1,
             params={'w': state['params']['w'] - 0.1 * loss})
  return new, {'loss': loss}


def fresh_state():
  return {'rng': jax.random.key(3), 'step': jnp.zeros((), jnp.int32),
          'params': {'w': jnp.arange(4.0)}}


BATCH = jnp.ones((2, 4))


def abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=REPLICATED),
                      tree)


def compile_in(cache_dir, identity='toy', batch=BATCH):
  previous = jax.config.jax_compilation_cache_dir
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  try:
    return stored_step.lower(step_fn, abstract(fresh_state()), abstract(batch),
                             identity=identity, out_sharding=REPLICATED,
                             compiler_options={}).compile()
  finally:
    jax.config.update('jax_compilation_cache_dir', previous)


@pytest.fixture(scope='module')
def stored(tmp_path_factory):
  """A step compiled with an empty cache directory (so exported and stored there)."""
  cache = str(tmp_path_factory.mktemp('cache'))
  return cache, compile_in(cache)


def run_twice(step):
  """Two steps from a fresh state; host copies of each step's state (key data for the
  key) and metrics, taken before the next step donates the state."""
  state = fresh_state()
  outs = []
  for _ in range(2):
    state, metrics = step(state, BATCH)
    snapshot = dict(state, rng=jax.random.key_data(state['rng']))
    outs.append(jax.tree.map(np.asarray, (snapshot, metrics)))
  assert jax.dtypes.issubdtype(state['rng'].dtype, jax.dtypes.prng_key)
  return outs


def test_the_stored_step_computes_what_the_jitted_step_does(stored):
  _, step = stored
  expected, got = run_twice(jax.jit(step_fn)), run_twice(step)
  chex.assert_trees_all_close(expected, got, rtol=1e-6)


def test_the_stored_step_donates_the_state(stored):
  _, step = stored
  state = fresh_state()
  step(state, BATCH)
  assert state['params']['w'].is_deleted()


def test_a_second_run_reads_the_stored_module_instead_of_tracing(stored, monkeypatch):
  cache, _ = stored
  files = os.listdir(os.path.join(cache, 'steps'))
  assert len(files) == 1 and files[0].endswith('.bin')

  def no_export(*unused_args, **unused_kwargs):
    raise AssertionError('traced again')

  monkeypatch.setattr(jax.export, 'export', no_export)
  loaded = compile_in(cache)
  chex.assert_trees_all_close(run_twice(loaded), run_twice(stored[1]))
  with pytest.raises(AssertionError, match='traced again'):  # another config is traced
    compile_in(cache, identity='another')


def test_other_shapes_or_configs_get_their_own_stored_step():
  state = abstract(fresh_state())
  base = stored_step.fingerprint('toy', state, abstract(BATCH))
  assert stored_step.fingerprint('toy', state, abstract(BATCH)) == base
  assert stored_step.fingerprint('other', state, abstract(BATCH)) != base
  assert stored_step.fingerprint('toy', state, abstract(jnp.ones((4, 4)))) != base


def test_an_unreadable_stored_step_is_traced_again_and_replaced(tmp_path):
  compile_in(str(tmp_path))
  (path,) = (tmp_path / 'steps').iterdir()
  path.write_bytes(b'not a module')
  step = compile_in(str(tmp_path))
  _, metrics = step(fresh_state(), BATCH)
  assert np.isfinite(float(metrics['loss']))
  assert path.read_bytes() != b'not a module'
  umask = os.umask(0)
  os.umask(umask)
  assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # readable as the cache's files
  assert not [p for p in (tmp_path / 'steps').iterdir() if p.suffix == '.tmp']
