"""The whole model: multi-scale flow with the Shuffle, the objective, the API."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import linen as nn
from helpers import brute_force_logdet, commit_orders, perturb

import eiw_jax
from eiw_jax.shuffle import transition_permutations


def make_config(**model):
  defaults = dict(num_scales=2, num_steps=2, hidden=8, shuffle_reduction=4)
  defaults.update(model)
  return ml_collections.ConfigDict(dict(
      model=eiw_jax.model_config(**defaults),
      data=dict(image_size=4, channels=2, num_bits=8)))


@pytest.fixture(scope='module', params=['standard', 'conditional'])
def flow_case(request):
  cfg = make_config(split_prior=request.param, learned_base=request.param == 'conditional')
  model = eiw_jax.build(cfg)
  x = jax.random.randint(jax.random.key(0), (3, 4, 4, 2), 0, 256)
  v = commit_orders(model, perturb(eiw_jax.init(model, jax.random.key(1), x),
                                   jax.random.key(2), 0.05))
  y = eiw_jax.to_continuous(x, 8) + 0.01 * jax.random.normal(jax.random.key(3), x.shape)
  return model, v, y


def test_shuffle_really_permutes(flow_case):
  model, v, _ = flow_case
  (perm,) = transition_permutations(model.flow, v['params']['flow'],
                                     flow_consts=v['consts']['flow'])
  perm = np.asarray(perm)
  assert not np.array_equal(perm, np.arange(perm.size))


def test_flow_round_trip_and_logdet_sign(flow_case):
  model, v, y = flow_case
  zs, ld = jax.jit(lambda v, y: eiw_jax.forward(model, v, y))(v, y)
  assert [z.shape for z in zs] == [(3, 1, 1, 16), (3, 1, 1, 16)]
  y_rec, ld_inv = jax.jit(lambda v, zs: eiw_jax.inverse(model, v, zs))(v, zs)
  assert float(jnp.max(jnp.abs(y_rec - y))) <= 1e-4
  np.testing.assert_allclose(ld, -ld_inv, rtol=1e-5, atol=1e-4)


def test_flow_logdet_matches_jacobian(flow_case):
  model, v, y = flow_case
  y1 = y[:1]  # 32 dims
  _, ld = eiw_jax.forward(model, v, y1)
  expected = brute_force_logdet(
      lambda t: eiw_jax.flatten_latents(eiw_jax.forward(model, v, t)[0]), y1)
  np.testing.assert_allclose(float(ld[0]), expected, rtol=1e-4, atol=1e-3)
  assert abs(expected) > 0.1


def test_permutation_is_the_only_difference_between_eiw_and_vanilla(flow_case):
  model, v, y = flow_case
  zs, _ = eiw_jax.forward(model, v, y)
  # Undo the shuffle by hand at the transition (equal scores: the identity), and
  # check the latents change.
  consts = jax.tree.map(lambda a: a, v['consts'])
  consts['flow']['shuffle_0']['order'] = jnp.zeros_like(consts['flow']['shuffle_0']['order'])
  zs_identity, _ = eiw_jax.forward(model, {**v, 'consts': consts}, y)
  assert not np.allclose(zs[0], zs_identity[0])


def test_eiw_equals_vanilla_at_init():
  x = jax.random.randint(jax.random.key(0), (4, 4, 4, 2), 0, 256)
  out = {}
  for shuffle in (True, False):
    model = eiw_jax.build(make_config(shuffle=shuffle))
    v = eiw_jax.init(model, jax.random.key(1), x)
    y = eiw_jax.to_continuous(x, 8)
    out[shuffle] = eiw_jax.forward(model, v, y) + (eiw_jax.log_prob(model, v, x, jax.random.key(4)),)
    if not shuffle:
      assert 'shuffle_0' not in v['params']['flow']
  for a, b in zip(jax.tree.leaves(out[True]), jax.tree.leaves(out[False])):
    np.testing.assert_array_equal(a, b)


class _CentreDequantizer(nn.Module):
  """u = 1/2 everywhere, log q = 0: makes the bound computable by hand."""

  @nn.compact
  def __call__(self, x, num_bits):
    return jnp.full(x.shape, 0.5, jnp.float32), jnp.zeros(x.shape[:1], jnp.float32)


def test_bits_per_dim_by_hand():
  model = eiw_jax.build(make_config()).clone(dequantizer=_CentreDequantizer())
  x = jax.random.randint(jax.random.key(0), (2, 4, 4, 2), 0, 256)
  v = perturb(eiw_jax.init(model, jax.random.key(1), x), jax.random.key(2), 0.02)
  loss, metrics = eiw_jax.loss(model, v, x, jax.random.key(7))
  y = (np.asarray(x, np.float64) + 0.5) / 256.0 - 0.5
  zs, ld, kls = model.apply(v, jnp.asarray(y, jnp.float32), method=eiw_jax.EIWFlow.encode)
  z = np.asarray(eiw_jax.flatten_latents(zs), np.float64)
  d = 4 * 4 * 2
  log_pz = -0.5 * np.sum(z**2, -1) - 0.5 * d * math.log(2 * math.pi)
  log_px = log_pz + np.asarray(ld, np.float64) - d * 8 * math.log(2)
  bpd = -log_px.mean() / (d * math.log(2))
  assert np.isfinite(bpd) and bpd > 0
  np.testing.assert_allclose(float(metrics['bpd']), bpd, rtol=1e-5)
  np.testing.assert_allclose(float(metrics['kl']), float(kls.sum()), rtol=1e-6)
  expected_loss = -log_px.mean() + 1e-3 * float(kls.sum())
  # The default reading adds its guider's fitting loss (trains only the guider).
  assert float(metrics['shuffle_fit']) > 0
  np.testing.assert_allclose(float(loss), expected_loss + float(metrics['shuffle_fit']),
                             rtol=1e-5)
  np.testing.assert_allclose(float(metrics['loss_bpd']), expected_loss / (d * math.log(2)),
                             rtol=1e-5)


def test_bits_per_dim_pure_functions():
  lp = jnp.array([-1000.0, -2000.0])
  np.testing.assert_allclose(eiw_jax.bits_per_dim(lp, 100), [1000 / (100 * math.log(2)),
                                                             2000 / (100 * math.log(2))], rtol=1e-6)
  loss, m = eiw_jax.objective(lp, jnp.array([0.5, 1.5]), 100, kl_weight=0.1)
  np.testing.assert_allclose(float(loss), 1500.0 + 0.2, rtol=1e-6)
  np.testing.assert_allclose(float(m['bpd']), 1500 / (100 * math.log(2)), rtol=1e-6)
  # A model that puts uniform density on [0, 1)^D in y-space scores exactly b bits/dim.
  np.testing.assert_allclose(float(eiw_jax.losses.bits_per_dim(
      eiw_jax.losses.log_likelihood_bound(0.0, 0.0, 100, 5), 100)), 5.0, rtol=1e-6)


@pytest.fixture(scope='module')
def variational_case():
  """One initialised model with a variational dequantizer, shared (one init compile)."""
  model = eiw_jax.build(make_config(dequantizer='variational', dequant_hidden=8, dequant_steps=2))
  x = jax.random.randint(jax.random.key(0), (2, 4, 4, 2), 0, 256)
  v = perturb(eiw_jax.init(model, jax.random.key(1), x), jax.random.key(2), 0.1)
  return model, x, commit_orders(model, v)


def test_jit_and_eager_agree_and_vmap_works(variational_case):
  model, x, v = variational_case
  key = jax.random.key(3)
  eager = eiw_jax.loss(model, v, x, key)[1]
  jitted = jax.jit(lambda v, x, k: eiw_jax.loss(model, v, x, k))(v, x, key)[1]
  for name in ('bpd', 'kl', 'loss'):
    np.testing.assert_allclose(eager[name], jitted[name], rtol=1e-5)
  batched = jax.vmap(lambda xb, k: eiw_jax.log_prob(model, v, xb, k))(
      jnp.stack([x, x]), jax.random.split(key, 2))
  assert batched.shape == (2, 2) and bool(jnp.all(jnp.isfinite(batched)))


def test_gradients_reach_every_parameter(variational_case):
  model, x, v = variational_case
  grads = jax.grad(lambda p: eiw_jax.loss(model, {**v, 'params': p}, x, jax.random.key(3))[0])(
      v['params'])
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  dead = [jax.tree_util.keystr(p) for p, g in flat if not np.any(np.asarray(g) != 0)]
  assert not dead, dead


def test_sample_and_latent_helpers():
  model = eiw_jax.build(make_config())
  x = jax.random.randint(jax.random.key(0), (2, 4, 4, 2), 0, 256)
  v = eiw_jax.init(model, jax.random.key(1), x)
  s = jax.jit(lambda v, k: eiw_jax.sample(model, v, k, 5, temperature=0.7))(v, jax.random.key(2))
  assert s.shape == (5, 4, 4, 2) and int(s.min()) >= 0 and int(s.max()) <= 255
  shapes = eiw_jax.latent_shapes(model, v, 5)
  zs = eiw_jax.sample_latents(model, v, jax.random.key(3), 5)
  flat = eiw_jax.flatten_latents(zs)
  assert flat.shape == (5, 32)
  back = eiw_jax.unflatten_latents(flat, [s[1:] for s in shapes])
  for a, b in zip(back, zs):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match='dims'):
    eiw_jax.unflatten_latents(flat[:, :10], [s[1:] for s in shapes])


def test_validate_rejects_bad_configs():
  with pytest.raises(eiw_jax.UserError, match='not divisible'):
    eiw_jax.build(ml_collections.ConfigDict(dict(
        model=eiw_jax.model_config(num_scales=3), data=dict(image_size=28, channels=1, num_bits=8))))
  with pytest.raises(eiw_jax.UserError, match='kl_weight'):
    eiw_jax.build(make_config(kl_weight=-1.0))
  with pytest.raises(eiw_jax.UserError, match='num_scales'):
    eiw_jax.build(make_config(num_scales=0))
