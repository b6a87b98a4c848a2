"""The paper's model: DenseFlow-74-10 with the Shuffle. Parameter counts of the full
configuration (no allocation), and the flow battery on a tiny DenseFlow with the
noise augmentation and the Shuffle on."""
import importlib.util
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import commit_orders, perturb

import eiw_jax
from eiw_jax.train import config as config_lib, recipes
from eiw_jax import train as train_lib
from eiw_jax.dequant import standard_normal_logpdf
from eiw_jax.evaluation.summary import param_counts
from eiw_jax.shuffle import transition_permutations

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_config(name, arg=None):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def shuffle_params(four_c, r=16):
  """Solver (L_S = 2: 1 -> 2C -> 4C) and guider (4C -> 4C//r -> 4C), weights and biases."""
  two_c, hidden = four_c // 2, four_c // r
  return (two_c + two_c) + (two_c * four_c + four_c) + (four_c * hidden + hidden) + (
      hidden * four_c + four_c)


def test_cifar10_config_builds_the_papers_parameter_counts():
  counts = param_counts(eiw_jax.build(load_config('cifar10')))
  assert counts['params_vanilla'] == 130_647_294  # DenseFlow-74-10's PyTorch model
  # Shuffles at the two transitions: 62 * 4 = 248 and 154 * 4 = 616 channels.
  assert counts['params_eiw'] - counts['params_vanilla'] == shuffle_params(248) + shuffle_params(616)
  assert abs(counts['params_eiw'] - 130.92e6) / 130.92e6 < 0.003  # paper, Table 4
  assert abs(counts['params_vanilla'] - 130.65e6) / 130.65e6 < 0.003


# DenseFlow's README: (training images, batch, epochs at 1e-3, epochs in all with the
# fine-tuning at 2e-5, augmentation); DESIGN §2: the importance-weighted k.
RECIPES = {'cifar10': (50_000, 64, 400, 420, 'flip_translate', 1000),
           'imagenet32': (1_281_167, 64, 20, 22, 'flip_translate', 200),
           'imagenet64': (1_281_167, 32, 10, 11, 'flip_translate', 200),
           'celeba': (162_770, 32, 50, 55, 'flip', 200)}


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_paper_configs_train_denseflows_recipe(name):
  n, batch, epochs, total, augment, k = RECIPES[name]
  cfg = load_config(name)
  per_epoch = n // batch
  assert cfg.data.batch_size == batch and cfg.data.augment == augment
  assert cfg.optim.finetune_after == epochs * per_epoch and cfg.optim.finetune_lr == 2e-5
  assert cfg.train.num_steps == total * per_epoch and cfg.eval.iw_samples == k
  config_lib.validate_run(cfg)
  # The docstring states the arithmetic with the config's own numbers.
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for value in (per_epoch, cfg.optim.finetune_after, cfg.train.num_steps, k):
    assert f'{value:,}' in module.__doc__, (name, value)
  for arg in ('small', 'smoke'):  # CPU-sized: fine-tuning and k kept, but small
    small = load_config(name, arg)
    assert 0 < small.optim.finetune_after < small.train.num_steps
    assert 0 < small.eval.iw_samples <= 8


def test_mnist_config_has_the_papers_mnist_settings():
  cfg = load_config('mnist')
  m = cfg.model
  assert (m.backbone, m.num_scales, m.dequantizer, m.shuffle, m.kl_weight) == (
      'denseflow', 2, 'variational', True, 1e-3)  # paper §6.2: K = 2, else as the others
  assert (cfg.data.image_size, cfg.data.augment, cfg.eval.iw_samples) == (28, 'none', 1000)
  assert cfg.train.num_steps == 105 * (60_000 // 64)
  config_lib.validate_run(cfg)
  for arg in ('small', 'smoke'):
    small = load_config('mnist', arg)
    config_lib.validate_run(small)
    assert small.model.backbone == 'denseflow' and len(small.model.denseflow.units) == 2
  # 28x28 -> 14x14 -> 7x7 without padding: both scales' tokens split into the landmarks.
  model = eiw_jax.build(load_config('mnist', 'smoke'))
  variables = jax.eval_shape(lambda: eiw_jax.init(model, jax.random.key(0),
                                                  jnp.zeros((2, 28, 28, 1), jnp.int32)))
  assert jax.tree.leaves(variables)


def test_fashion_mnists_denseflow_is_mnists_and_the_demo_is_its_small_one_cut_by_time():
  """`:denseflow` is the paper's MNIST model and schedule on Fashion-MNIST; `make demo`
  trains `:denseflow_small`, mnist's `:small` without fine-tuning, for as many steps as
  its 20 minutes allow."""
  for arg, mnist_arg in (('denseflow', None), ('denseflow_small', 'small'),
                         ('denseflow_smoke', 'smoke')):
    cfg, mnist = load_config('fashion_mnist', arg), load_config('mnist', mnist_arg)
    config_lib.validate_run(cfg)
    assert cfg.data.name == 'fashion_mnist'
    assert cfg.model.to_dict() == mnist.model.to_dict(), arg
  demo, small = load_config('fashion_mnist', 'denseflow_small'), load_config('mnist', 'small')
  assert demo.data.batch_size == small.data.batch_size and demo.optim.lr == small.optim.lr
  assert demo.optim.finetune_after == 0 and demo.train.num_steps >= 100_000
  with open(os.path.join(ROOT, 'Makefile')) as f:
    assert 'DEMO_CONFIG ?= configs/fashion_mnist.py:denseflow_small' in f.read()


@pytest.fixture(scope='module')
def tiny():
  cfg = recipes.denseflow_base(name='cifar10', image_size=8, batch_size=2, train_steps=1)
  recipes.tiny_denseflow(cfg, units=(2, 1), modules=(1, 1))
  cfg.model.update(num_scales=2, shuffle_reduction=4, dequantizer='uniform')
  model = eiw_jax.build(cfg)
  x = jax.random.randint(jax.random.key(0), (2, 8, 8, 3), 0, 256)
  v = commit_orders(model, perturb(eiw_jax.init(model, jax.random.key(1), x),
                                   jax.random.key(2), 0.05))
  y = eiw_jax.to_continuous(x, 8)
  return cfg, model, v, y


def _encode(model, v, y, noise):
  return model.apply(v, y, method=lambda m, y: m.flow(y, noise=noise))


def test_tiny_denseflow_shuffle_really_permutes(tiny):
  _, model, v, _ = tiny
  (perm,) = transition_permutations(model.flow, v['params']['flow'],
                                     flow_consts=v['consts']['flow'])
  perm = np.asarray(perm)
  assert perm.size == 56 and not np.array_equal(perm, np.arange(56))


def test_tiny_denseflow_round_trip(tiny):
  _, model, v, y = tiny
  latents, ld, kls = model.apply(v, y, method=eiw_jax.EIWFlow.encode,
                                 rngs={'noise': jax.random.key(3)})
  assert [z.shape for z in latents] == [(2, 2, 2, 28), (2, 2, 2, 28)]  # 12+2 -> 56 -> 28|28
  assert kls.shape == (1,) and float(kls[0]) > 0
  y_back, ld_inv = eiw_jax.inverse(model, v, latents)
  assert float(jnp.max(jnp.abs(y_back - y))) <= 1e-4
  np.testing.assert_allclose(ld, -ld_inv, rtol=1e-5, atol=1e-3)


def test_tiny_denseflow_logdet_matches_jacobian(tiny):
  """The square map (y, eta) -> latents: its log|det| is the reported logdet plus log N(eta)."""
  _, model, v, y = tiny
  y1 = y[:1]
  eta = jax.random.normal(jax.random.key(4), (1, 4, 4, 2))  # one cross-unit coupling, growth 2
  noise = lambda e: [[e], None]
  latents, ld, _ = _encode(model, v, y1, noise(eta))
  n = y1.size

  def square(flat):
    out, _, _ = _encode(model, v, flat[:n].reshape(y1.shape), noise(flat[n:].reshape(eta.shape)))
    return eiw_jax.flatten_latents(out)[0]

  flat = jnp.concatenate([y1.reshape(-1), eta.reshape(-1)])
  jac = jax.jacfwd(square)(flat)
  assert jac.shape == (flat.size, flat.size)
  sign, expected = np.linalg.slogdet(np.asarray(jac, np.float64))
  assert sign != 0
  reported = float(ld[0]) + float(standard_normal_logpdf(eta)[0])
  np.testing.assert_allclose(reported, expected, rtol=1e-4, atol=1e-2)


def test_tiny_denseflow_training_step_runs(tiny):
  cfg, _, _, _ = tiny
  cfg = cfg.copy_and_resolve_references()
  cfg.data.update(source='synthetic', num_synthetic=8)
  trainer = train_lib.Trainer(cfg)
  batch = trainer.global_batch(np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)))
  state = trainer._init(jax.random.key(0), batch)  # pylint: disable=protected-access
  state, metrics = trainer._step(state, batch)  # pylint: disable=protected-access
  assert int(state.step) == 1 and np.isfinite(float(metrics['loss']))
  assert float(metrics['grad_norm']) > 0


def test_tiny_denseflow_bfloat16_loss_close_and_exact_round_trip(tiny):
  """compute_dtype='bfloat16': the coupling, attention and cross-unit nets compute in
  bfloat16 on float32 parameters; the loss stays within 1% of float32, the logdets
  are float32 and the round trip is exact to 1e-4 (the inverse recomputes the same
  bfloat16 conditioner outputs)."""
  cfg, m32, v, y = tiny
  cfg = cfg.copy_and_resolve_references()
  cfg.model.compute_dtype = 'bfloat16'
  m16 = eiw_jax.build(cfg)
  images = jax.random.randint(jax.random.key(0), (2, 8, 8, 3), 0, 256)

  @jax.jit  # one compile for everything below
  def run(v):
    losses = [eiw_jax.loss(m, v, images, jax.random.key(5))[0] for m in (m32, m16)]
    latents, ld, kls = m16.apply(v, y, method=eiw_jax.EIWFlow.encode,
                                 rngs={'noise': jax.random.key(3)})
    return losses, latents, ld, kls, eiw_jax.inverse(m16, v, latents)

  jaxpr = str(jax.make_jaxpr(lambda v: eiw_jax.forward(m16, v, y, jax.random.key(3)))(v))
  assert 'bf16[2,4,4,8]' in jaxpr  # the coupling nets' features (hidden=8)
  (l32, l16), latents, ld, kls, (y_back, ld_inv) = run(v)
  assert l16.dtype == jnp.float32 and abs(float(l16 - l32)) < 1e-2 * abs(float(l32))
  assert ld.dtype == kls.dtype == jnp.float32 and all(z.dtype == jnp.float32 for z in latents)
  assert float(jnp.max(jnp.abs(y_back - y))) <= 1e-4
  np.testing.assert_allclose(ld, -ld_inv, rtol=1e-5, atol=1e-3)


def test_tiny_denseflow_batch_norm_trains_checkpoints_and_evaluates_per_example(tiny, tmp_path):
  """model.denseflow.norm='batch': the training step updates the running averages
  (in consts), checkpoints carry them, and evaluation uses them (per example)."""
  from eiw_jax.train.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  cfg = tiny[0].copy_and_resolve_references()
  cfg.model.denseflow.norm = 'batch'
  cfg.data.update(source='synthetic', num_synthetic=8, batch_size=4)
  trainer = train_lib.Trainer(cfg)
  x = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3))
  batch = trainer.global_batch(x)
  state = trainer._init(jax.random.key(0), batch)  # pylint: disable=protected-access
  stats = lambda s: {k: np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(s.consts)
                     if 'norm' in jax.tree_util.keystr(k)}  # copies: the step donates the state
  before = stats(state)
  assert len(before) == 2 * 3  # mean and var of the coupling nets of 3 units
  state, metrics = trainer._step(state, batch)  # pylint: disable=protected-access
  assert np.isfinite(float(metrics['loss']))
  after = stats(state)
  assert all(np.max(np.abs(after[k] - before[k])) > 1e-6 for k in before)
  with Checkpointer(str(tmp_path), config=cfg) as ckpt:
    ckpt.save(1, state, force=True)
    ckpt.wait()
    restored, _ = ckpt.restore(trainer.abstract_state())
  for k, v in stats(restored).items():
    np.testing.assert_array_equal(v, after[k])
  # Evaluation: an image's log-density does not depend on the rest of its batch.
  model, v = trainer.model, restored.variables()
  y = eiw_jax.to_continuous(jnp.asarray(x), 8)
  eta = jax.random.normal(jax.random.key(4), (4, 4, 4, 2))
  logdet = jax.jit(lambda v, y, e: _encode(model, v, y, [[e], None])[1])
  other = np.array([2, 3, 3, 2])  # another batch of the same size holding images 2 and 3
  ld_all, ld_other = logdet(v, y, eta), logdet(v, y[other], eta[other])
  np.testing.assert_allclose(ld_all[2:], ld_other[:2], rtol=1e-5, atol=1e-3)


def test_configs_saved_before_the_norm_key_resume_as_group_norm(tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  from eiw_jax.train.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  from eiw_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  cfg = load_config('cifar10', 'smoke')
  old = json.loads(json.dumps(cfg.to_dict()))
  del old['model']['denseflow']['norm']  # as written before the key existed
  with Checkpointer(str(tmp_path), config=ml_collections.ConfigDict(old)) as ckpt:
    ckpt.save(1, {'w': jnp.ones(3)}, force=True)
  Checkpointer(str(tmp_path), config=cfg).close()  # 'group' is what it meant
  cfg.model.denseflow.norm = 'batch'
  with pytest.raises(UserError, match='model.denseflow.norm'):
    Checkpointer(str(tmp_path), config=cfg)
  cfg.model.invertible_grad = True
  with pytest.raises(UserError, match='invertible_grad'):
    eiw_jax.build(cfg)


def test_invertible_backprop_lowers_denseflows_step_memory():
  """bench_lib's memory curve: XLA's account of the compiled step grows with the
  batch, and invertible backprop (units of 4 modules) needs less than autodiff."""
  from benchmarks import bench_lib  # pylint: disable=g-import-not-at-top
  cfg = recipes.denseflow_base(name='cifar10', image_size=8, batch_size=2, train_steps=1)
  recipes.tiny_denseflow(cfg, units=(1,), modules=(4,))
  cfg.model.update(num_scales=1, dequantizer='uniform', shuffle=False)
  mem = bench_lib.invertible_memory_by_batch(cfg, batches=(2, 8))
  assert set(mem) == {'autodiff_B2', 'autodiff_B8', 'invertible_B2', 'invertible_B8'}
  assert mem['autodiff_B8'] > mem['autodiff_B2']
  assert mem['invertible_B8'] < mem['autodiff_B8']
