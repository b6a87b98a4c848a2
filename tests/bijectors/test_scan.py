"""Repeat (stacked steps under lax.scan) and invertible backprop."""
import functools
import importlib

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import brute_force_logdet, perturb

import eiw_jax
from eiw_jax import nets
from eiw_jax.backbones.denseflow import DenseFlowScale
from eiw_jax.backbones.densenet import NetSettings
from eiw_jax.bijectors.scan import Repeat
from eiw_jax.backbones.glow import GlowStep

STEP = functools.partial(GlowStep, hidden=8)


@pytest.fixture(scope='module')
def repeat_case():
  x = jax.random.normal(jax.random.key(0), (3, 2, 2, 4)) * 2.0 + 1.0
  layer = Repeat(STEP, 3)
  v = perturb(layer.init(jax.random.key(1), x, method='forward'), jax.random.key(2), 0.05)
  return layer, v, x


def test_init_is_data_dependent_per_step(repeat_case):
  layer = Repeat(STEP, 3)
  x = jax.random.normal(jax.random.key(0), (16, 2, 2, 4)) * 2.0 + 1.0
  v = layer.init(jax.random.key(1), x, method='forward')
  log_scale = np.asarray(v['params']['steps']['step']['ActNorm_0']['log_scale'])
  assert log_scale.shape == (3, 4)
  # Step 0 normalises the data (std 2 -> log_scale ~ -log 2); later steps see their own input.
  np.testing.assert_allclose(log_scale[0], -np.log(np.std(np.asarray(x), axis=(0, 1, 2))),
                             rtol=1e-4)
  assert not np.allclose(log_scale[1], log_scale[0])


def test_repeat_matches_the_unrolled_steps(repeat_case):
  layer, v, x = repeat_case
  y, ld = layer.apply(v, x, method='forward')
  stacked = v['params']['steps']['step']
  consts = v['consts']['steps']['step']
  h, total = x, 0.0
  for i in range(3):
    take = lambda t: jax.tree.map(lambda a: a[i], t)  # pylint: disable=cell-var-from-loop
    h, l = STEP().apply({'params': take(stacked), 'consts': take(consts)}, h, method='forward')
    total = total + l
  np.testing.assert_allclose(y, h, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ld, total, rtol=1e-5)


def test_repeat_round_trip_and_jacobian(repeat_case):
  layer, v, x = repeat_case
  y, ld = layer.apply(v, x, method='forward')
  x_back, ld_inv = layer.apply(v, y, method='inverse')
  assert float(jnp.max(jnp.abs(x_back - x))) <= 1e-5
  np.testing.assert_allclose(ld, -ld_inv, rtol=1e-5, atol=1e-5)
  expected = brute_force_logdet(lambda t: layer.apply(v, t, method='forward')[0], x[:1])
  np.testing.assert_allclose(float(ld[0]), expected, rtol=1e-4, atol=1e-4)


def _glow_model_grads():
  """Loss and gradients of a whole model, with and without invertible backprop, at
  one set of variables (the two models have the same parameters)."""
  def build(invertible):
    model_cfg = eiw_jax.model_config(num_scales=2, num_steps=3, hidden=8, shuffle_reduction=4,
                                     invertible_grad=invertible)
    return eiw_jax.build(ml_collections.ConfigDict(dict(
        model=model_cfg, data=dict(image_size=8, channels=1, num_bits=8))))

  x = jax.random.randint(jax.random.key(0), (4, 8, 8, 1), 0, 256)
  v = perturb(eiw_jax.init(build(False), jax.random.key(1), x), jax.random.key(2), 0.05)

  def grads(invertible):
    model = build(invertible)
    loss = lambda p: eiw_jax.loss(model, {**v, 'params': p}, x, jax.random.key(3))[0]
    return jax.jit(jax.value_and_grad(loss))(v['params'])

  return grads(False), grads(True)


def _denseflow_unit_grads():
  """One DenseFlow unit of 3 scanned modules (tiny widths)."""
  unit = functools.partial(DenseFlowScale, num_units=1, num_modules=3,
                           net=NetSettings(hidden=8, dense_growth=4, depth=1, embed=4))
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
  v = perturb(unit().init(jax.random.key(1), x, method='forward'), jax.random.key(2), 0.05)

  def grads(invertible):
    def loss(p):
      y, logdet = unit(invertible_grad=invertible).apply({**v, 'params': p}, x, method='forward')
      return jnp.sum(jnp.square(y)) - jnp.sum(logdet)
    return jax.jit(jax.value_and_grad(loss))(v['params'])

  return grads(False), grads(True)


@pytest.mark.parametrize('grads', [_glow_model_grads, _denseflow_unit_grads])
def test_invertible_backprop_equals_autodiff(grads):
  (loss_a, grads_a), (loss_b, grads_b) = grads()
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
  flat_a, flat_b = jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)
  assert len(flat_a) == len(flat_b) > 10
  for a, b in zip(flat_a, flat_b):
    scale = float(jnp.max(jnp.abs(a))) + 1e-12
    assert float(jnp.max(jnp.abs(a - b))) / scale <= 1e-4


def test_rematerialised_steps_keep_gradients_and_stack_less():
  """Repeat's remat policies against keeping every intermediate ('off'): the same loss
  and gradients; 'convs' (the default) needs less of XLA's temporary memory, and
  'spatial_convs' (the 1x1 outputs recomputed too) less again."""
  step = functools.partial(GlowStep, hidden=32)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 4))
  v = perturb(Repeat(step, 6).init(jax.random.key(1), x, method='forward'),
              jax.random.key(2), 0.05)

  def compiled(remat):
    def loss(p):
      y, logdet = Repeat(step, 6, remat=remat).apply({**v, 'params': p}, x, method='forward')
      return jnp.sum(jnp.square(y)) - jnp.sum(logdet)
    return jax.jit(jax.value_and_grad(loss)).lower(v['params']).compile()

  programs = {remat: compiled(remat) for remat in ('off', 'convs', 'spatial_convs')}
  loss_a, grads_a = programs['off'](v['params'])
  for remat in ('convs', 'spatial_convs'):
    loss_b, grads_b = programs[remat](v['params'])
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    chex.assert_trees_all_close(grads_a, grads_b, rtol=1e-5, atol=1e-6)
  temp = {k: p.memory_analysis().temp_size_in_bytes for k, p in programs.items()}
  # 0.73 with jaxlib 0.10.2 on CPU; keeping every intermediate would give 1.
  assert temp['convs'] < 0.85 * temp['off']
  assert temp['spatial_convs'] < temp['convs']
  with pytest.raises(ValueError, match='unknown remat'):
    Repeat(step, 6, remat='all').apply(v, x, method='forward')


def _equations(jaxpr):
  """Every equation of `jaxpr` and of the jaxprs nested in its equations' parameters."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        sub = getattr(sub, 'jaxpr', sub)  # a ClosedJaxpr's Jaxpr
        if hasattr(sub, 'eqns'):
          yield from _equations(sub)


def _kept_names(jaxpr):
  """{frozenset of the checkpoint names each rematerialised region's policy saves},
  asked of the policies themselves (their printed form differs between jax versions)."""
  eqns = list(_equations(jaxpr))
  names = [e for e in eqns if e.primitive.name == 'name']
  candidates = {e.params['name'] for e in names} | {nets.CONV_OUTPUT, nets.MATMUL_OUTPUT}
  kept = set()
  for e in eqns:
    if 'policy' in e.params and e.params['policy'] is not None:
      probe = names[0]  # a checkpoint-name equation: its primitive and operand
      kept.add(frozenset(n for n in candidates if e.params['policy'](
          probe.primitive, *(v.aval for v in probe.invars), name=n)))
  return kept


@pytest.mark.parametrize('config_name', ['fashion_mnist', 'cifar10'])
def test_model_remat_reaches_every_scanned_step(config_name):
  """--config.model.remat chooses the policy of each scanned step of the built model
  (Glow and DenseFlow): the names it keeps, or no rematerialisation at all."""
  cfg = importlib.import_module(f'configs.{config_name}').get_config('smoke')
  x = jnp.zeros((2, cfg.data.image_size, cfg.data.image_size, cfg.data.channels), jnp.int32)
  kept = {}
  for remat in ('off', 'convs', 'spatial_convs'):
    cfg.model.remat = remat
    model = eiw_jax.build(cfg)
    v = jax.eval_shape(lambda: eiw_jax.init(model, jax.random.key(0), x))
    jaxpr = jax.make_jaxpr(lambda v: eiw_jax.loss(model, v, x, jax.random.key(1))[0])(v)
    kept[remat] = _kept_names(jaxpr.jaxpr)
    assert kept[remat] or remat == 'off'
  assert kept['off'] == set()
  assert kept['convs'] == {frozenset({'conv1x1_output', 'conv_output'})}
  assert kept['spatial_convs'] == {frozenset({'conv_output'})}
