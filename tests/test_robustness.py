"""Nothing lost: preemption, damaged checkpoints, non-finite steps, bad input and
numerics. One in-process smoke run is the reference that every command-line run
(killed, terminated, resumed) must reproduce bit for bit."""
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from eiw_jax import api, cli, data
from eiw_jax.data import sources
from eiw_jax.train import runs
from eiw_jax import train as train_lib
from eiw_jax.bijectors import Coupling
from eiw_jax.builder import build
from eiw_jax.train.checkpoint import Checkpointer
from eiw_jax.dequant import VariationalDequantizer
from eiw_jax.errors import UserError
from eiw_jax.model import to_continuous
from eiw_jax.nets import ConvNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 10
ARGS = ('--config=configs/fashion_mnist.py:smoke', '--config.data.source=synthetic',
        f'--config.train.num_steps={NUM_STEPS}', '--config.train.checkpoint_every=1')


def smoke_config(**train):
  """The config that ARGS give train.py, with `train` overrides."""
  spec = importlib.util.spec_from_file_location('fm', os.path.join(ROOT, 'configs/fashion_mnist.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config('smoke')
  cfg.data.source = 'synthetic'
  cfg.train.update(num_steps=NUM_STEPS, checkpoint_every=1)
  cfg.train.update(train)
  return cfg


@pytest.fixture(scope='module')
def ref(tmp_path_factory):
  """An uninterrupted run of ARGS (in-process): its workdir."""
  workdir = str(tmp_path_factory.mktemp('ref'))
  train_lib.train_and_evaluate(smoke_config(), workdir)
  return workdir


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  """Subprocess environment sharing a compilation cache (reruns skip the compile)."""
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp('jax_cache')),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')


def _run(env, *args):
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)


def _errors(stderr):
  lines = [l for l in stderr.splitlines() if l.startswith('error: ')]
  assert len(lines) == 1 and 'Traceback' not in stderr, stderr
  return lines[0]


def _committed(workdir):
  d = os.path.join(workdir, 'checkpoints')
  names = os.listdir(d) if os.path.isdir(d) else []
  return sorted(int(n) for n in names
                if n.isdigit() and os.path.exists(os.path.join(d, n, 'commit_success.txt')))


def _snapshot(workdir):
  out = {}
  for dirpath, dirnames, filenames in os.walk(workdir):
    for name in dirnames + filenames:
      path = os.path.join(dirpath, name)
      out[os.path.relpath(path, workdir)] = (None if os.path.isdir(path) else
                                             hashlib.sha256(open(path, 'rb').read()).hexdigest())
  return out


def _params(workdir, step=None):
  """Checkpointed (params, opt_state) of `step` (default: the newest) as numpy."""
  trainer = train_lib.Trainer(smoke_config())
  with Checkpointer(workdir, max_to_keep=None) as ckpt:
    state, _ = ckpt.restore(trainer.abstract_state(), step=step or ckpt.latest_step())
  return jax.device_get((state.params, state.opt_state))


def _assert_bitwise(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _metrics(workdir):
  records = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  for r in records:
    del r['images_per_s'], r['input_wait_fraction']  # timings
    if 'sample_grid' in r:
      r['sample_grid'] = os.path.relpath(r['sample_grid'], workdir)
  return records


# ---------------------------------------------------------------- preemption


def _wait_for(proc, condition, timeout=240):
  t0 = time.time()
  while not condition():
    assert proc.poll() is None, 'the run ended before it could be interrupted'
    assert time.time() - t0 < timeout, 'timed out'
    time.sleep(0.005)


def test_killed_and_terminated_runs_resume_bitwise(ref, env, tmp_path):
  workdir, log = str(tmp_path / 'w'), tmp_path / 'log.txt'

  def start():
    return subprocess.Popen([sys.executable, 'train.py', *ARGS, f'--workdir={workdir}'],
                            cwd=ROOT, env=env, stdout=open(log, 'w'), stderr=subprocess.STDOUT)

  ckpt_dir = os.path.join(workdir, 'checkpoints')
  saving = lambda: os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir)
  # 1. SIGKILL as the first checkpoint is being written.
  proc = start()
  _wait_for(proc, saving)
  proc.kill()
  proc.wait()
  # 2. SIGTERM: saves the current step, says so, exits 0.
  proc = start()
  _wait_for(proc, lambda: _committed(workdir) and _committed(workdir)[-1] >= 3)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=60) == 0, log.read_text()
  out = log.read_text()
  saved = _committed(workdir)[-1]
  assert f'SIGTERM: saved a checkpoint at step {saved};' in out and saved < NUM_STEPS, out
  # 3. SIGKILL once it has gone past the terminated step.
  proc = start()
  _wait_for(proc, lambda: _committed(workdir)[-1] > saved)
  proc.kill()
  proc.wait()
  newest = _committed(workdir)[-1]
  assert newest > saved  # a good checkpoint is never deleted before a newer one is complete
  # 4. Run to the end.
  proc = start()
  assert proc.wait(timeout=240) == 0, log.read_text()
  out = log.read_text()
  assert f'resumed from step {newest}' in out and 'final test bits/dim' in out, out
  _assert_bitwise(_params(workdir), _params(ref))
  assert _metrics(workdir) == _metrics(ref)  # killed runs' extra records are dropped


# --------------------------------------------------------------- checkpoints


def _corrupt(step_dir):
  """Truncates every array file of a checkpoint to half its size."""
  for dirpath, _, filenames in os.walk(os.path.join(step_dir, 'default')):
    for name in filenames:
      if os.sep + 'd' in dirpath:
        path = os.path.join(dirpath, name)
        os.truncate(path, os.path.getsize(path) // 2)


def test_training_falls_back_past_a_corrupt_newest_checkpoint(ref, tmp_path, capsys):
  workdir = str(tmp_path / 'w')
  shutil.copytree(ref, workdir)
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '8'))
  _corrupt(os.path.join(workdir, 'checkpoints', '10'))
  train_lib.train_and_evaluate(smoke_config(keep_checkpoints=1), workdir)
  err = capsys.readouterr().err
  assert 'checkpoint step 10 is unreadable' in err and 'resumed from step 9' in err, err
  assert _committed(workdir) == [10]  # step 9 was deleted only once the new 10 was complete
  assert os.listdir(os.path.join(workdir, 'corrupt_checkpoints')) == ['10-1']
  _assert_bitwise(_params(workdir), _params(ref))


def test_eval_falls_back_past_a_half_written_checkpoint(ref, env, tmp_path):
  workdir = str(tmp_path / 'w')
  shutil.copytree(ref, workdir)
  os.remove(os.path.join(workdir, 'checkpoints', '10', 'commit_success.txt'))
  proc = _run(env, 'eval.py', f'--workdir={workdir}', '--mode=bpd')
  assert proc.returncode == 0, proc.stderr
  assert 'evaluating step 9' in proc.stdout and 'step 10 is unreadable' in proc.stderr
  assert json.load(open(os.path.join(workdir, 'eval', 'bpd.json')))['bpd'] > 0


def test_incompatible_workdir_is_refused_and_left_unchanged(ref, env, tmp_path):
  workdir = str(tmp_path / 'w')
  shutil.copytree(ref, workdir)
  before = _snapshot(workdir)
  proc = _run(env, 'train.py', *ARGS, f'--workdir={workdir}', '--config.model.hidden=16')
  assert proc.returncode == 2
  line = _errors(proc.stderr)
  assert 'model.hidden=8' in line and 'model.hidden=16' in line and '--workdir' in line
  assert _snapshot(workdir) == before


@pytest.mark.parametrize('layout', ['empty', 'unfinished_save'])
def test_eval_without_a_checkpoint_writes_nothing(tmp_path, layout):
  workdir = tmp_path / 'w'
  workdir.mkdir()
  if layout == 'unfinished_save':
    (workdir / 'checkpoints' / '2.orbax-checkpoint-tmp-1').mkdir(parents=True)
  before = _snapshot(str(workdir))
  with pytest.raises(UserError, match='no checkpoint in .*; train first'):
    runs.load_for_eval(smoke_config(), str(workdir))
  assert _snapshot(str(workdir)) == before


# ---------------------------------------------------------------- non-finite


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
  assert _committed(workdir) == [1, 2, 3]  # nothing written for the stopping step
  trainer = train_lib.Trainer(cfg)
  with Checkpointer(workdir) as ckpt:
    s1, s3 = (ckpt.restore(trainer.abstract_state(), step=s)[0] for s in (1, 3))
  _assert_bitwise((s1.params, s1.opt_state), (s3.params, s3.opt_state))
  assert (int(s3.nonfinite_streak), int(s3.nonfinite_total)) == (2, 2)


# ----------------------------------------------------------------- bad input


def _write_idx(path, images):
  header = bytes([0, 0, 0x08, images.ndim]) + np.array(images.shape, '>u4').tobytes()
  with open(path, 'wb') as f:
    f.write(header + images.astype(np.uint8).tobytes())


def _idx_dir(d, test=True):
  d.mkdir()
  images = np.random.default_rng(0).integers(0, 256, (16, 8, 8))
  _write_idx(d / 'train-images-idx3-ubyte', images)
  if test:
    _write_idx(d / 't10k-images-idx3-ubyte', images[:8])
  return d


def _npz_dir(d, images):
  d.mkdir()
  for split in ('train', 'test'):
    np.savez(d / f'{split}.npz', images=images)
  return d


def _data(cfg, d, source, **data_keys):
  cfg.data.update(name='mnist', source=source, dir=str(d), image_size=8, **data_keys)


BAD_INPUT = {
    # case: (edit config (cfg, tmp_path), words the message must hold)
    'image_size': (lambda c, t: c.data.update(image_size=30),
                   ['image_size=30 is not divisible by 4', '--config.model.num_scales']),
    'num_scales': (lambda c, t: c.model.update(num_scales=0),
                   ['num_scales must be >= 1', '--config.model.num_scales']),
    'kl_weight': (lambda c, t: c.model.update(kl_weight=-0.5), ['kl_weight (lambda) must be >= 0']),
    'channels': (lambda c, t: _data(c, _idx_dir(t / 'd'), 'idx', channels=3),
                 ['1 channels but channels=3', '--config.data.channels=1']),
    'dtype': (lambda c, t: _data(c, _npz_dir(t / 'd', np.ones((16, 8, 8, 1), np.float32)), 'npz'),
              ['float32 with values in [1.0, 1.0]', 'expected uint8', 'convert']),
    'empty_file': (lambda c, t: (_data(c, _idx_dir(t / 'd'), 'idx'),
                                 open(t / 'd' / 'train-images-idx3-ubyte', 'w').close()),
                   ['not an IDX file', 're-download']),
    'truncated_file': (lambda c, t: (_data(c, _idx_dir(t / 'd'), 'idx'),
                                     os.truncate(t / 'd' / 'train-images-idx3-ubyte', 500)),
                       ['truncated or corrupt', 're-download']),
    'corrupt_npz': (lambda c, t: (_data(c, _npz_dir(t / 'd', np.zeros((16, 8, 8, 1), np.uint8)),
                                        'npz'), open(t / 'd' / 'train.npz', 'wb').write(b'x' * 99)),
                    ['train.npz', 'fix the file']),
    'missing_test_split': (lambda c, t: _data(c, _idx_dir(t / 'd', test=False), 'idx'),
                           ['no t10k-images-idx3-ubyte', '--config.data.dir']),
    'missing_dataset': (lambda c, t: _data(c, t / 'nowhere', 'auto'),
                        ['does not exist', '--config.data.dir']),
    'unknown_key': (lambda c, t: c.train.update(max_nonfinite=3),
                    ['unknown config key train.max_nonfinite', 'train.max_nonfinite_steps']),
    'max_nonfinite_steps': (lambda c, t: c.train.update(max_nonfinite_steps=0),
                            ['train.max_nonfinite_steps must be an integer >= 1']),
    'keep_checkpoints': (lambda c, t: c.train.update(keep_checkpoints=0),
                         ['train.keep_checkpoints must be']),
    'lr': (lambda c, t: c.optim.update(lr=-1.0), ['optim.lr must be > 0', '--config.optim.lr']),
    'ema_decay': (lambda c, t: c.optim.update(ema_decay=1.0), ['optim.ema_decay must be in [0, 1)']),
    'compute_dtype': (lambda c, t: c.model.update(compute_dtype='float16'),
                      ["model.compute_dtype must be 'float32' or 'bfloat16'"]),
    'coordinator_alone': (lambda c, t: c.train.update(distributed=True,
                                                      coordinator_address='localhost:1234'),
                          ['go together', '--config.train.num_processes=2']),
    'process_id': (lambda c, t: c.train.update(distributed=True, coordinator_address='h:1',
                                               num_processes=2, process_id=2),
                   ['train.process_id=2 must be below train.num_processes=2']),
}


@pytest.mark.parametrize('case', sorted(BAD_INPUT))
def test_bad_input_is_one_line_and_writes_nothing(case, tmp_path):
  edit, words = BAD_INPUT[case]
  cfg = smoke_config()
  edit(cfg, tmp_path)
  workdir = tmp_path / 'w'
  with pytest.raises(UserError) as e:
    train_lib.train_and_evaluate(cfg, str(workdir))
  msg = str(e.value)
  assert '\n' not in msg and all(w in msg for w in words), msg
  assert not workdir.exists()


SMOKE = '--config=configs/fashion_mnist.py:smoke'


@pytest.mark.parametrize('args,words', [
    ((SMOKE, '--config.modle.hidden=8'), ['unknown config key modle.hidden', '--config.model.hidden']),
    ((SMOKE, '--config.train.max_nonfinite=1'), ['did you mean --config.train.max_nonfinite_steps']),
    ((SMOKE, '--config.model.num_scales=two'), ['num_scales=two is not a valid int']),
    ((SMOKE, '--workdirr=/tmp/x'), ['workdirr']),
    (('--config=configs/fashion_mnst.py',), ['fashion_mnst.py']),
    (('--config=configs/fashion_mnist.py:smok',), ['smok', ':smoke']),
])
def test_flag_typos_are_one_line_exit_2(args, words, monkeypatch, capsys):
  monkeypatch.chdir(ROOT)
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=fv, lock_config=True)
  flags.DEFINE_string('workdir', None, '', flag_values=fv)
  with pytest.raises(SystemExit) as e:
    cli.parse_flags(['train.py', '--workdir=/tmp/x', *args], fv)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and err.startswith('error: ')
  assert all(w in err for w in words), err


# ------------------------------------------------------------------ numerics


def test_trained_model_round_trips(ref):
  model, variables, step = runs.load_for_eval(smoke_config(), ref)
  assert step == NUM_STEPS
  images = data.load_split(smoke_config().data, 'test').images[:8]
  y = to_continuous(jnp.asarray(images, jnp.int32), 8)
  back = jax.jit(lambda v, y: api.decode(model, v, api.encode(model, v, y)))(variables, y)
  assert float(jnp.max(jnp.abs(back - y))) <= 1e-4


def _coupling(dtype=None):
  return Coupling(functools.partial(ConvNet, hidden=8, dtype=dtype))


@pytest.mark.parametrize('sign', [1.0, -1.0])
def test_extreme_conditioner_outputs_keep_log_scale_bounded(sign):
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
  layer = _coupling()
  params = layer.init(jax.random.key(1), x)['params']
  bias = params['out']['bias'].at[1::2].set(sign * 1e30)  # raw log-scales: +-1e30
  params = {**params, 'out': {**params['out'], 'bias': bias}}
  y, logdet = layer.apply({'params': params}, x)
  bound, d_b = layer.log_scale_bound, 4 * 4 * 2
  np.testing.assert_allclose(logdet, sign * bound * d_b, rtol=1e-6)  # |log_s| = bound exactly
  np.testing.assert_allclose(y[..., 2:], x[..., 2:] * np.exp(sign * bound), rtol=1e-5)
  back, inv_logdet = layer.apply({'params': params}, y, inverse=True)
  np.testing.assert_allclose(back, x, atol=1e-5)
  np.testing.assert_array_equal(inv_logdet, -logdet)


def test_bfloat16_conditioner_keeps_the_coupling_float32_and_exact():
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
  f32, bf16 = _coupling(), _coupling(jnp.bfloat16)
  params = f32.init(jax.random.key(1), x)['params']
  out = params['out']
  params = {**params, 'out': {**out, 'kernel': 0.3 * jax.random.normal(jax.random.key(2),
                                                                        out['kernel'].shape)}}
  assert jax.tree.structure(bf16.init(jax.random.key(1), x)['params']) == jax.tree.structure(params)
  jaxpr = str(jax.make_jaxpr(lambda x: bf16.apply({'params': params}, x))(x))
  assert 'bf16[2,4,4,8]' in jaxpr  # the conditioner's features
  y, logdet = bf16.apply({'params': params}, x)
  assert y.dtype == logdet.dtype == jnp.float32
  back, inv_logdet = bf16.apply({'params': params}, y, inverse=True)
  assert float(jnp.max(jnp.abs(back - x))) <= 1e-5
  np.testing.assert_array_equal(inv_logdet, -logdet)
  y32, logdet32 = f32.apply({'params': params}, x)
  np.testing.assert_allclose(logdet, logdet32, atol=0.1)  # bf16 rounding: close, not equal
  assert 0 < float(jnp.max(jnp.abs(y - y32))) < 5e-2


def test_bfloat16_dequantizer_keeps_log_q_float32():
  images = jnp.asarray(sources.synthetic_images(4, 8, 1, seed=0)[0], jnp.int32)
  f32, bf16 = VariationalDequantizer(1, 8), VariationalDequantizer(1, 8, dtype=jnp.bfloat16)
  rngs = {'params': jax.random.key(0), 'dequant': jax.random.key(1)}
  variables = f32.init(rngs, images, 8)
  jaxpr = str(jax.make_jaxpr(lambda v: bf16.apply(v, images, 8, rngs=rngs))(variables))
  assert 'bf16[4,8,8,8]' in jaxpr  # the context net's features
  (u32, lq32), (u16, lq16) = (m.apply(variables, images, 8, rngs=rngs) for m in (f32, bf16))
  assert u16.dtype == lq16.dtype == jnp.float32
  np.testing.assert_allclose(lq16, lq32, rtol=1e-2)
  np.testing.assert_allclose(u16, u32, atol=2e-2)


def _has_glow_dtype():
  from eiw_jax.backbones.glow import GlowStep  # pylint: disable=g-import-not-at-top
  return 'dtype' in GlowStep.__dataclass_fields__


@pytest.mark.skipif(not _has_glow_dtype(), reason='needs a dtype field on flow.GlowStep')
def test_bfloat16_model_loss_close_and_exact_round_trip():
  images = jnp.asarray(sources.synthetic_images(8, 8, 1, seed=0)[0], jnp.int32)
  cfg = smoke_config()
  cfg.data.image_size = 8
  models = {}
  for dtype in ('float32', 'bfloat16'):
    cfg.model.compute_dtype = dtype
    models[dtype] = build(cfg)
  m32, m16 = models['float32'], models['bfloat16']
  variables = api.init(m32, jax.random.key(0), images)
  key = jax.random.key(1)
  loss = jax.jit(lambda m, v: api.loss(m, v, images, key)[0], static_argnums=0)
  l32, l16 = loss(m32, variables), loss(m16, variables)
  assert l16.dtype == jnp.float32 and abs(float(l16 - l32)) < 1e-2 * abs(float(l32))
  y = to_continuous(images, 8)
  assert 'bf16' in str(jax.make_jaxpr(lambda v: api.forward(m16, v, y))(variables))
  _, logdet = api.forward(m16, variables, y)
  assert logdet.dtype == jnp.float32
  back = jax.jit(lambda v: api.decode(m16, v, api.encode(m16, v, y)))(variables)
  assert float(jnp.max(jnp.abs(back - y))) <= 1e-4
