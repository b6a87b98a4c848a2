"""Tests for eiw_jax.train.checkpoint: round trip, shardings, crashes, corruption, config."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from eiw_jax.train import checkpoint
from eiw_jax.builder import model_config
from eiw_jax.train.checkpoint import Checkpointer
from eiw_jax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[2]
# After a failed read, tensorstore may call back into orbax's closed event loop,
# possibly during a later test; Python reports that as an ignored exception.
pytestmark = pytest.mark.filterwarnings(
    'ignore::pytest.PytestUnraisableExceptionWarning')


def _state(seed):
  """Nested dicts, int32 step, adam state (NamedTuples), typed PRNG key."""
  params = {'enc': {'w': jnp.arange(24.0).reshape(4, 6) * seed,
                    'b': jnp.full((6,), float(seed))},
            'dec': {'conv': {'kernel': jnp.ones((4, 3, 3)) / seed}}}
  tx = optax.adam(1e-2)
  grads = jax.tree.map(lambda p: p + 1.0, params)
  _, opt_state = tx.update(grads, tx.init(params), params)
  return {'step': jnp.int32(seed), 'params': params, 'opt_state': opt_state,
          'rng': jax.random.key(seed)}


def _abstract(state, sharding_fn=None):
  def one(x):
    sharding = sharding_fn(x) if sharding_fn else x.sharding
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  return jax.tree.map(one, state)


def _assert_same(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert g.dtype == w.dtype and g.shape == w.shape
    if jax.dtypes.issubdtype(w.dtype, jax.dtypes.prng_key):
      g, w = jax.random.key_data(g), jax.random.key_data(w)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def _save(workdir, steps, **kwargs):
  with checkpoint.Checkpointer(str(workdir), **kwargs) as ckpt:
    for s in steps:
      assert ckpt.save(s, _state(s))
    ckpt.wait()


def _data_files(step_dir):
  """The array data files (OCDBT `d/` folders) of one step."""
  files = [p for p in step_dir.rglob('*') if p.is_file() and p.parent.name == 'd']
  assert files, f'no data files found under {step_dir}'
  return files


def _truncate_data(step_dir):
  for f in _data_files(step_dir):
    with open(f, 'r+b') as fh:
      fh.truncate(7)


def _listing(root):
  return sorted((str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1)
                for p in root.rglob('*'))


def _run(script, *args, devices=1):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  return subprocess.run([sys.executable, '-c', textwrap.dedent(script), *args],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=120)


def test_round_trip_typed_state(tmp_path):
  assert not checkpoint.has_checkpoint(str(tmp_path))
  _save(tmp_path, [1, 2])
  assert checkpoint.has_checkpoint(str(tmp_path))
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  assert ckpt.latest_step() == 2 and ckpt.all_steps() == [1, 2]
  state, step = ckpt.restore(_abstract(_state(2)))
  assert step == 2
  _assert_same(state, _state(2))
  assert isinstance(state['opt_state'][0], optax.ScaleByAdamState)
  assert state['step'].dtype == jnp.int32
  assert jax.dtypes.issubdtype(state['rng'].dtype, jax.dtypes.prng_key)
  # Concrete arrays as the target, and an explicit older step.
  state, step = ckpt.restore(_state(7), step=1)
  assert step == 1
  _assert_same(state, _state(1))
  ckpt.close()


def test_empty_workdir(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  assert ckpt.latest_step() is None
  assert ckpt.restore(_abstract(_state(1))) is None
  ckpt.close()


def test_restore_onto_mesh_shardings(tmp_path):
  _save(tmp_path, [3])
  mesh = jax.make_mesh((jax.device_count(),), ('x',))
  n = jax.device_count()
  spec = lambda x: P('x') if x.ndim and x.shape[0] % n == 0 else P()
  target = _abstract(_state(3), lambda x: NamedSharding(mesh, spec(x)))
  with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
    state, _ = ckpt.restore(target)
  _assert_same(state, _state(3))
  for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(target)):
    assert got.sharding == want.sharding


def test_restore_onto_multi_device_mesh(tmp_path):
  script = """
  import sys, jax, jax.numpy as jnp, numpy as np
  from jax.sharding import NamedSharding, PartitionSpec as P
  from eiw_jax.train import checkpoint
  assert jax.device_count() == 4
  mesh = jax.make_mesh((4,), ('x',))
  rep, row = NamedSharding(mesh, P()), NamedSharding(mesh, P('x'))
  state = {'w': jax.device_put(jnp.arange(32.0).reshape(8, 4), rep),
           'keys': jax.device_put(jax.random.split(jax.random.key(1), 4), rep),
           'step': jnp.int32(5)}
  with checkpoint.Checkpointer(sys.argv[1]) as ckpt:
    ckpt.save(5, state)
  target = {'w': jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=row),
            'keys': jax.ShapeDtypeStruct((4,), state['keys'].dtype, sharding=row),
            'step': jax.ShapeDtypeStruct((), jnp.int32, sharding=rep)}
  with checkpoint.Checkpointer(sys.argv[1]) as ckpt:
    got, step = ckpt.restore(target)
  assert step == 5
  for k in target:
    assert got[k].sharding == target[k].sharding, (k, got[k].sharding)
  assert len(got['w'].addressable_shards) == 4
  assert got['w'].addressable_shards[1].data.shape == (2, 4)
  np.testing.assert_array_equal(got['w'], state['w'])
  np.testing.assert_array_equal(jax.random.key_data(got['keys']),
                                jax.random.key_data(state['keys']))
  print('OK')
  """
  result = _run(script, str(tmp_path), devices=4)
  assert result.returncode == 0 and 'OK' in result.stdout, result.stderr[-3000:]


def test_killed_mid_save_keeps_previous(tmp_path):
  # The save of step 2 is killed right before its atomic rename; with
  # max_to_keep=1 the previous step must still be there and readable.
  script = """
  import os, signal, sys, jax.numpy as jnp
  from orbax.checkpoint._src.path import async_path
  from eiw_jax.train import checkpoint
  ckpt = checkpoint.Checkpointer(sys.argv[1], max_to_keep=1)
  ckpt.save(1, {'x': jnp.arange(8.0)})
  ckpt.wait()
  async_path.rename = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
  ckpt.save(2, {'x': jnp.arange(8.0) + 1})
  ckpt.wait()
  print('not killed')
  """
  result = _run(script, str(tmp_path))
  assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
  names = os.listdir(tmp_path / 'checkpoints')
  assert '1' in names and '2' not in names
  assert any(n.startswith('2.orbax-checkpoint-tmp') for n in names), names
  target = {'x': jax.ShapeDtypeStruct((8,), jnp.float32,
                                      sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))}
  with checkpoint.Checkpointer(str(tmp_path), max_to_keep=1) as ckpt:
    assert ckpt.latest_step() == 1
    state, step = ckpt.restore(target)
    assert step == 1
    np.testing.assert_array_equal(state['x'], np.arange(8.0))
    assert ckpt.save(2, {'x': jnp.arange(8.0) + 1})
    ckpt.wait()
    assert ckpt.all_steps() == [2]
  assert os.listdir(tmp_path / 'checkpoints') == ['2']  # Leftover tmp removed.


def test_corrupt_newest_falls_back_and_good_step_survives(tmp_path, capsys):
  _save(tmp_path, [1, 2], max_to_keep=2)
  _truncate_data(tmp_path / 'checkpoints' / '2')
  target = _abstract(_state(1))
  ckpt = checkpoint.Checkpointer(str(tmp_path), max_to_keep=2)
  state, step = ckpt.restore(target)
  assert step == 1
  _assert_same(state, _state(1))
  err = capsys.readouterr().err
  assert 'checkpoint step 2 is unreadable (' in err
  assert 'falling back to step 1' in err
  # Step 2 is moved out of orbax's view, so it no longer counts towards
  # max_to_keep: saving 3 and 4 never leaves zero readable checkpoints.
  assert ckpt.all_steps() == [1]
  assert os.listdir(tmp_path / 'corrupt_checkpoints') == ['2-1']

  def readable():
    steps = ckpt.all_steps()
    for s in steps:
      got, _ = ckpt.restore(_abstract(_state(s)), step=s)
      _assert_same(got, _state(s))
    return steps

  assert ckpt.save(3, _state(3))
  ckpt.wait()
  assert readable() == [1, 3]
  assert ckpt.save(4, _state(4))
  ckpt.wait()
  assert readable() == [3, 4]
  ckpt.close()


def test_max_to_keep_one_cannot_fall_back(tmp_path):
  # Documented limit: the older step is gone once the newer one committed.
  _save(tmp_path, [1, 2], max_to_keep=1)
  assert os.listdir(tmp_path / 'checkpoints') == ['2']
  _truncate_data(tmp_path / 'checkpoints' / '2')
  with checkpoint.Checkpointer(str(tmp_path), max_to_keep=1) as ckpt:
    with pytest.raises(UserError, match='no readable checkpoint'):
      ckpt.restore(_abstract(_state(2)))


def test_half_written_step_is_skipped(tmp_path, capsys):
  _save(tmp_path, [1, 2])
  ckpt_dir = tmp_path / 'checkpoints'
  # Step 3: final name but no commit marker, as left by an interrupted copy.
  os.rename(ckpt_dir / '2', ckpt_dir / '3')
  _save(tmp_path / 'other', [2])
  os.rename(tmp_path / 'other' / 'checkpoints' / '2', ckpt_dir / '2')
  os.remove(ckpt_dir / '3' / 'commit_success.txt')
  # An unfinished orbax tmp dir is ignored as well.
  os.mkdir(ckpt_dir / '4.orbax-checkpoint-tmp-123')
  with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
    assert ckpt.latest_step() == 2
    state, step = ckpt.restore(_abstract(_state(2)))
    assert step == 2
    _assert_same(state, _state(2))
    assert 'checkpoint step 3 is unreadable' in capsys.readouterr().err
    assert ckpt.save(3, _state(3))  # The half-written step 3 no longer blocks it.
    ckpt.wait()
    assert ckpt.all_steps() == [1, 2, 3]
  assert not (ckpt_dir / '4.orbax-checkpoint-tmp-123').exists()


def test_zeroed_data_falls_back(tmp_path):
  _save(tmp_path, [1, 2])
  for f in _data_files(tmp_path / 'checkpoints' / '2'):
    f.write_bytes(b'\0' * f.stat().st_size)
  with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
    _, step = ckpt.restore(_abstract(_state(2)))
  assert step == 1


def test_no_readable_checkpoint_raises_and_moves_nothing(tmp_path):
  _save(tmp_path, [1, 2])
  wrong = _abstract(_state(1))
  wrong['params']['extra'] = jax.ShapeDtypeStruct((3,), jnp.float32)
  before = _listing(tmp_path)
  with checkpoint.Checkpointer(str(tmp_path)) as ckpt:  # another model: no fall back
    with pytest.raises(UserError, match=r'step 2 .* holds another model than the config '
                       r'\(params.extra is missing there\)'):
      ckpt.restore(wrong)
    with pytest.raises(UserError, match=r'step 1 .* holds another model'):
      ckpt.restore(wrong, step=1)
  assert _listing(tmp_path) == before


def _config(depth=4, image_size=32, num_steps=100):
  return ml_collections.ConfigDict({
      'model': {'depth': depth, 'widths': (8, 16)},
      'data': {'image_size': image_size, 'channels': 3, 'num_bits': 8,
               'batch_size': 4},
      'num_steps': num_steps, 'lr': 1e-3})


@pytest.mark.parametrize('changed, key, old, new', [
    (dict(depth=6), 'model.depth', '4', '6'),
    (dict(image_size=64), 'data.image_size', '32', '64'),
])
def test_config_mismatch_writes_nothing(tmp_path, changed, key, old, new):
  _save(tmp_path, [1], config=_config())
  config_bytes = (tmp_path / 'config.json').read_bytes()
  before = _listing(tmp_path)
  with pytest.raises(UserError) as info:
    checkpoint.Checkpointer(str(tmp_path), config=_config(**changed))
  msg = str(info.value)
  assert '\n' not in msg and f'{key}={old}' in msg and f'{key}={new}' in msg
  assert 'use a new --workdir' in msg
  assert (tmp_path / 'config.json').read_bytes() == config_bytes
  assert _listing(tmp_path) == before


def test_config_mismatch_in_fresh_workdir_creates_nothing(tmp_path):
  # A config.json but no checkpoint: nothing to be incompatible with.
  (tmp_path / 'config.json').write_text('{"model": {"depth": 1}}')
  with checkpoint.Checkpointer(str(tmp_path), config=_config()) as ckpt:
    assert ckpt.latest_step() is None
  assert '"depth": 4' in (tmp_path / 'config.json').read_text()


def test_config_other_changes_update_on_save(tmp_path):
  _save(tmp_path, [1], config=_config())
  assert '"num_steps": 100' in (tmp_path / 'config.json').read_text()
  with checkpoint.Checkpointer(str(tmp_path), config=_config(num_steps=500)) as ckpt:
    assert '"num_steps": 100' in (tmp_path / 'config.json').read_text()
    assert ckpt.save(2, _state(2))
  text = (tmp_path / 'config.json').read_text()
  assert '"num_steps": 500' in text and '"depth": 4' in text


def test_objective_keys_and_new_default_keys_are_not_structural(tmp_path):
  """Changing lambda or turning on invertible backprop resumes; so does a config
  saved before a key with its default existed. A structural change is refused."""
  base = {'model': model_config().to_dict(), 'data': {'image_size': 8, 'channels': 1,
                                                      'num_bits': 8}}
  old = json.loads(json.dumps(base))
  del old['model']['compute_dtype']  # as written by an older version
  ckpt = Checkpointer(str(tmp_path), config=ml_collections.ConfigDict(old))
  ckpt.save(1, {'w': jnp.ones(3)}, force=True)
  ckpt.close()
  changed = json.loads(json.dumps(base))
  changed['model'].update(kl_weight=0.5, invertible_grad=True)
  Checkpointer(str(tmp_path), config=ml_collections.ConfigDict(changed)).close()
  changed['model']['num_steps'] += 1
  with pytest.raises(UserError, match='model.num_steps'):
    Checkpointer(str(tmp_path), config=ml_collections.ConfigDict(changed))


def test_relative_workdir(tmp_path, monkeypatch):
  """`--workdir=runs/x` is relative; orbax itself accepts only absolute paths."""
  monkeypatch.chdir(tmp_path)
  ckpt = Checkpointer('runs/rel', max_to_keep=2)
  ckpt.save(1, {'w': jnp.arange(3.0)}, force=True)
  ckpt.wait()
  restored, step = ckpt.restore({'w': jnp.zeros(3)})
  ckpt.close()
  assert step == 1
  np.testing.assert_array_equal(restored['w'], np.arange(3.0))
  assert (tmp_path / 'runs' / 'rel' / 'checkpoints' / '1').is_dir()
