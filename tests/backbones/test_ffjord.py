"""Tests for the FFJORD backbone (eiw_jax/ffjord.py): the bijector battery on one CNF
block with random non-identity parameters (round trip, forward logdet = -inverse
logdet, exact-trace logdet against slogdet(jax.jacfwd)), Hutchinson's estimator
unbiased, the adjoints' gradients equal, and the whole model with backbone='ffjord'.

Tolerances: the solves run at rtol = atol = 1e-7 in float32, so round trips and
logdets agree to ~1e-5; the checks below allow 1e-4.
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from eiw_jax import api, builder
from eiw_jax.backbones import ffjord
from eiw_jax.errors import UserError
from helpers import brute_force_logdet, perturb

SHAPE = (2, 4, 4, 2)  # D = 32 per image
TIGHT = dict(hidden=8, layers=3, rtol=1e-7, atol=1e-7)


def key(seed):
  # 'rbg' keys: XLA:CPU compiles each threefry call site in seconds (see test_denseflow).
  return jax.random.key(seed, impl='rbg')


def data(seed, shape=SHAPE):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def init_block(x, hidden, layers, **unused):
  """Perturbed variables of a CNF block. The parameters do not depend on the solver,
  so a one-step Euler block initialises them (a much smaller compile)."""
  layer = ffjord.CNFBlock(hidden=hidden, layers=layers, solver='euler', fixed_steps=1,
                          trace='exact')
  return perturb(layer.init({'params': key(0)}, x), key(1), 0.3)


@pytest.fixture(scope='module')
def block():
  """A CNF block (exact trace, forward-mode adjoint for jacfwd), its perturbed
  variables, an input and the jitted forward and inverse."""
  layer = ffjord.CNFBlock(trace='exact', adjoint='forward', **TIGHT)
  variables = init_block(data(0), **TIGHT)
  fwd = jax.jit(lambda x: layer.apply(variables, x))
  inv = jax.jit(lambda y: layer.apply(variables, y, inverse=True))
  return layer, variables, data(2), fwd, inv


@pytest.mark.parametrize('time_layer', ffjord.TIME_LAYERS)
def test_block_starts_as_the_identity(time_layer):
  """The dynamics net's output is zero at initialisation (so dz/dt = 0 and the block
  is the identity), and non-zero, t-dependent once its parameters move."""
  net = ffjord.DynamicsNet(2, hidden=8, layers=3, time_layer=time_layer)
  z = data(3)
  variables = jax.jit(net.init)(key(0), z, 0.0)
  apply = jax.jit(net.apply)
  np.testing.assert_array_equal(apply(variables, z, 0.7), 0.0)
  moved = perturb(variables, key(1), 0.3)
  assert float(jnp.max(jnp.abs(apply(moved, z, 0.7) - apply(moved, z, 0.2)))) > 1e-3


def test_round_trip_within_solver_tolerance(block):
  _, _, x, fwd, inv = block
  y, _ = fwd(x)
  assert float(jnp.max(jnp.abs(y - x))) > 0.1  # the block does something
  x_back, _ = inv(y)
  np.testing.assert_allclose(x_back, x, atol=1e-4)


def test_forward_logdet_is_minus_inverse_logdet(block):
  _, _, x, fwd, inv = block
  y, logdet = fwd(x)
  _, inverse_logdet = inv(y)
  assert float(jnp.min(jnp.abs(logdet))) > 0.1
  np.testing.assert_allclose(logdet, -inverse_logdet, atol=1e-4)


def test_exact_trace_logdet_matches_brute_force_jacobian(block):
  layer, variables, x, fwd, _ = block
  _, logdet = fwd(x)
  for i in range(SHAPE[0]):
    expected = brute_force_logdet(lambda v: layer.apply(variables, v)[0], x[i:i + 1])
    np.testing.assert_allclose(float(logdet[i]), expected, atol=1e-4)


def test_exact_trace_against_jacobian_diagonal():
  """exact_trace on a per-image nonlinear map against the trace of its full Jacobian."""
  w = data(4, (2, 2))

  def fn(z):  # [B, 4, 4, 2] -> same; mixes channels and pixels of one image only
    return jnp.tanh(z @ w) * jnp.roll(z, 1, axis=1) + jnp.sin(z)

  z = data(5)
  expected = [np.trace(jax.jacfwd(lambda v: fn(v[None])[0].reshape(-1))(z[i]).reshape(32, 32))
              for i in range(SHAPE[0])]
  np.testing.assert_allclose(ffjord.exact_trace(fn, z), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('probe', ffjord.PROBES)
def test_hutchinson_logdet_is_unbiased(block, probe):
  """The block's first image repeated 512 times: each copy draws its own probe
  (per-image noise), so the logdets are 512 independent estimates of the exact one.
  Their mean must be within 5 standard errors of it (and they must really vary)."""
  n = 512
  _, variables, x, fwd, _ = block
  _, exact = fwd(x)
  layer = ffjord.CNFBlock(trace='hutchinson', probe=probe, **TIGHT)
  copies = jnp.broadcast_to(x[:1], (n, *x.shape[1:]))
  y, estimates = layer.apply(variables, copies, rngs={'noise': key(7)})
  np.testing.assert_allclose(y[-1], y[0], atol=1e-6)  # the probe does not move z
  std = float(jnp.std(estimates))
  assert std > 1e-2 * abs(float(exact[0]))
  assert abs(float(jnp.mean(estimates)) - float(exact[0])) < 5 * std / np.sqrt(n)


def test_adjoints_give_the_same_gradients():
  """Recursive checkpointing (default) and backsolve agree on d(loss)/d(params)."""
  x = data(8, (1, 4, 4, 2))
  variables = init_block(x, hidden=8, layers=2)

  def grads(adjoint):
    layer = ffjord.CNFBlock(hidden=8, layers=2, solver='bosh3', rtol=1e-6, atol=1e-6,
                            adjoint=adjoint)

    def loss(params):
      y, logdet = layer.apply({'params': params}, x, rngs={'noise': key(3)})
      return jnp.sum(y ** 2) - jnp.sum(logdet)

    return jax.grad(loss)(variables['params'])

  # Backsolve recomputes z(t) backwards, so it agrees to the solver's tolerance
  # (elementwise differences up to ~0.3% seen), not to rounding: compare norms.
  checkpoint = jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads('recursive_checkpoint'))])
  backsolve = jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads('backsolve'))])
  assert float(jnp.linalg.norm(checkpoint)) > 1e-1
  assert float(jnp.linalg.norm(checkpoint - backsolve)) < 1e-3 * float(jnp.linalg.norm(checkpoint))


def test_kinetic_penalty_against_euler_integration(block):
  """The sown kinetic penalty, weight * int_0^1 ||f(z(t), t)||^2 dt per image, against
  the same integral by explicit Euler steps of the block's own dynamics net (400 and
  800 steps, Richardson-extrapolated: Euler's error is first order)."""
  _, variables, x, _, _ = block
  layer = ffjord.CNFBlock(kinetic_weight=0.5, **{**TIGHT, 'rtol': 1e-5, 'atol': 1e-5})
  _, sown = layer.apply(variables, x, rngs={'noise': key(4)},
                        mutable=[ffjord.PENALTY_COLLECTION])
  (penalty,) = jax.tree.leaves(sown)
  net = ffjord.DynamicsNet(SHAPE[-1], TIGHT['hidden'], TIGHT['layers'])
  params = {'params': variables['params']['dynamics']}

  @functools.partial(jax.jit, static_argnums=1)
  def euler_energy(x, n):
    def step(i, carry):
      z, energy = carry
      dz = net.apply(params, z, i / n)
      return z + dz / n, energy + jnp.sum(dz ** 2, axis=(1, 2, 3)) / n
    return jax.lax.fori_loop(0, n, step, (x, jnp.zeros(SHAPE[0])))[1]

  energy = 2 * euler_energy(x, 800) - euler_energy(x, 400)
  assert float(jnp.min(energy)) > 0.1
  np.testing.assert_allclose(penalty, 0.5 * energy, rtol=1e-2)


def tiny_config(**ffjord_overrides):
  model = builder.model_config(backbone='ffjord', num_scales=2, shuffle_reduction=2)
  model.ffjord.update(dict(blocks=1, hidden=8, layers=2, rtol=1e-3, atol=1e-3,
                           **ffjord_overrides))
  return ml_collections.ConfigDict(dict(model=model, data=dict(image_size=8, channels=1,
                                                                num_bits=8)))


@pytest.fixture(scope='module')
def tiny_model():
  """The model (default Dopri5) and variables initialised by a one-step Euler twin
  (the same parameters; a smaller compile)."""
  model = builder.build(tiny_config())
  twin = builder.build(tiny_config(solver='euler', fixed_steps=1))
  images = jnp.asarray(np.random.default_rng(9).integers(0, 256, (4, 8, 8, 1)), jnp.int32)
  return model, api.init(twin, key(0), images), images


@pytest.fixture(scope='module')
def loss_and_grads(tiny_model):
  """api.loss (the training objective, its metrics) and its gradients."""
  model, variables, images = tiny_model
  return jax.jit(jax.value_and_grad(
      lambda p: api.loss(model, {**variables, 'params': p}, images, key(1)),
      has_aux=True))(variables['params'])


def test_model_gives_finite_loss_and_gradients(loss_and_grads):
  (loss, metrics), grads = loss_and_grads
  assert np.isfinite(float(loss)) and 4.0 < float(metrics['bpd']) < 12.0
  assert 'ode_penalty' not in metrics  # the regularisers are off by default
  leaves = jax.tree.leaves(grads['flow']['scale_0'])
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert max(float(jnp.max(jnp.abs(g))) for g in leaves) > 0  # the CNF's nets get gradients


def test_model_reports_function_evaluations(loss_and_grads):
  """metrics['nfe'] sums the two solves (one block per scale), each 6 evaluations
  per Dopri5 step and one more at the start."""
  (_, metrics), _ = loss_and_grads
  nfe = int(metrics['nfe'])
  assert nfe >= 14 and (nfe - 2) % 6 == 0


@pytest.mark.parametrize('key, value, words', [
    ('solver', 'rk4', 'model.ffjord.solver'),
    ('kinetic_weight', -1.0, 'model.ffjord.kinetic_weight'),
    ('trace', 'exactly', 'model.ffjord.trace'),
    ('rtol', 0.0, 'model.ffjord.rtol'),
    ('blocks', 0, 'model.ffjord.blocks'),
])
def test_bad_ffjord_settings_are_refused(key, value, words):
  cfg = tiny_config()
  cfg.model.ffjord[key] = value
  with pytest.raises(UserError, match=words):
    builder.validate(cfg)
