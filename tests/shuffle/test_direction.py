"""Which units the Shuffle factors out: every direction a docstring states, checked.

The paper (§4, Prop. 1; §3.5) factors out the units that already look like the
N(0, 1) prior and sends on those that carry information (narrow, shifted,
multimodal). Synthetic u_k with three N(0, 1) units and one each of N(0, 0.05^2),
a +-1 bimodal and N(3, 1): after a short training of the solver and guider (or of
the oracle's statistics) the N(0, 1) units must be the ones factored out.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from eiw_jax import shuffle
from eiw_jax.train.config import base_config
from eiw_jax.shuffle.base import FIT_COLLECTION
from eiw_jax.train.optimizer import make_optimizer

# Unit kinds in the order of u_k's units: 0 = N(0, 1), the rest far from the prior.
KINDS = ('normal', 'narrow', 'normal', 'bimodal', 'normal', 'shifted')
INFORMATIVE = {1, 3, 5}


def synthetic_u(key, unit_size=1, batch=64, size=4):
  """u_k [batch, size, size, len(KINDS) * unit_size]: every element of unit i drawn
  independently from KINDS[i]'s distribution."""
  n = len(KINDS) * unit_size
  k1, k2 = jax.random.split(key)
  z = jax.random.normal(k1, (batch, size, size, n))
  signs = jnp.sign(jax.random.uniform(k2, z.shape) - 0.5)
  kinds = np.repeat(np.array(KINDS), unit_size)
  out = jnp.where(kinds == 'narrow', 0.05 * z, z)
  out = jnp.where(kinds == 'bimodal', signs + 0.1 * z, out)
  return jnp.where(kinds == 'shifted', 3.0 + z, out)


def train(mode, unit='channel', statistic='dataset_kl', steps=300):
  """Trains one Shuffle alone on fresh synthetic u_k as the training step does (the
  optimiser of train_lib, λ = 1e-3, the order following the live scores). Returns
  the units factored out at the end."""
  unit_size = shuffle.UNITS[unit]
  sh = shuffle.make_shuffle(
      shuffle.ShuffleSettings(mode=mode, unit=unit, statistic=statistic, reduction=4),
      len(KINDS) * unit_size)
  cfg = base_config(name='x', image_size=4, channels=1, batch_size=1, train_steps=1)
  cfg.optim.update(warmup_steps=20)
  opt = make_optimizer(cfg.optim)
  params = {'flow': {'shuffle_0': sh.init(jax.random.key(1), synthetic_u(
      jax.random.key(0), unit_size), method='forward')['params']}}

  def loss(p, u):
    (_, kl), sown = sh.apply({'params': p['flow']['shuffle_0']}, u, method='forward_with_kl',
                             mutable=[FIT_COLLECTION])
    return 1e-3 * kl + sum(jax.tree.leaves(sown))

  @jax.jit
  def run(params):
    def step(carry, key):
      p, s = carry
      updates, s = opt.update(jax.grad(loss)(p, synthetic_u(key, unit_size)), s, p)
      return (optax.apply_updates(p, updates), s), None
    (p, _), _ = jax.lax.scan(step, (params, opt.init(params)),
                             jax.random.split(jax.random.key(2), steps))
    return sh.apply({'params': p['flow']['shuffle_0']}, method='unit_permutation')

  order = np.asarray(run(params))
  return set(order[len(KINDS) // 2:].tolist())


@pytest.mark.parametrize('mode,unit', [('likelihood', 'channel'), ('likelihood', 'map'),
                                       ('oracle', 'channel'), ('oracle', 'map')])
def test_the_paper_direction_factors_out_the_gaussian_units(mode, unit):
  # shuffle/__init__.py, likelihood.py, oracle.py, statistics.py ('dataset_kl'):
  # the units closest to the prior are factored out, the informative ones go on.
  factored = train(mode, unit)
  assert factored == {0, 2, 4}, factored


def test_the_nll_statistic_factors_out_the_narrow_unit():
  # statistics.py and likelihood.py: 'nll' ranks the narrowest units lowest, so the
  # N(0, 0.05^2) unit is factored out (the reverse of the paper for it) and the
  # N(3, 1) one goes on.
  factored = train('oracle', statistic='nll')
  assert 1 in factored and 5 not in factored, factored


def test_the_divergence_statistic_measures_within_one_image():
  # statistics.py: 'divergence' sees each image's spatial mean and variance. A unit
  # that is constant within each image but N(0, 1) across images is far from the
  # prior for it, and close for 'dataset_kl'.
  per_image = jax.random.normal(jax.random.key(0), (64, 1, 1, 2)) * jnp.ones((1, 4, 4, 1))
  within = jax.random.normal(jax.random.key(1), (64, 4, 4, 2))
  u = jnp.concatenate([per_image, within], axis=-1)  # units 0, 1 per image; 2, 3 iid
  div = np.asarray(shuffle.unit_statistic(u, 'divergence')).mean(0)
  data = np.asarray(shuffle.unit_statistic(u, 'dataset_kl'))[0]
  assert div[:2].min() > 5 * div[2:].max()
  assert np.abs(data).max() < 0.1


def test_dataset_kl_matches_the_closed_form_for_gaussian_units():
  # KL(N(m, s^2) || N(0, 1)) = (s^2 + m^2 - 1 - log s^2) / 2, negentropy 0.
  m = np.array([0.0, 0.0, 0.0, 3.0, -1.0, 0.5])
  sd = np.array([1.0, 0.05, 2.0, 1.0, 0.5, 1.5])
  z = jax.random.normal(jax.random.key(0), (20000, 2, 2, len(m)))
  got = np.asarray(shuffle.dataset_kl(z * sd + m))[0]
  want = 0.5 * (sd**2 + m**2 - 1 - np.log(sd**2))
  np.testing.assert_allclose(got, want, atol=0.01, rtol=0.01)


def test_negentropy_by_hand():
  y = np.asarray(jax.random.normal(jax.random.key(3), (50, 3)), np.float64)
  y[:, 1] = np.sign(y[:, 1])  # a +-1 two-point sample
  g = np.exp(-y**2 / 2)
  k1, k2 = 36 / (8 * math.sqrt(3) - 9), 24 / (16 * math.sqrt(3) - 27)
  want = k1 * np.mean(y * g, 0)**2 + k2 * (np.mean(g, 0) - math.sqrt(0.5))**2
  np.testing.assert_allclose(shuffle.negentropy(jnp.asarray(y, jnp.float32)), want, rtol=1e-4)
  # Exactly two points at +-1: k2 (exp(-1/2) - sqrt(1/2))^2.
  two = jnp.array([1.0, -1.0] * 8)
  np.testing.assert_allclose(float(shuffle.negentropy(two)),
                             k2 * (math.exp(-0.5) - math.sqrt(0.5))**2, rtol=1e-5)


def test_a_map_scores_the_mean_of_its_channels():
  u = synthetic_u(jax.random.key(4), unit_size=4)
  per_channel = np.asarray(shuffle.unit_statistic(u, 'dataset_kl'))
  per_map = np.asarray(shuffle.unit_statistic(u, 'dataset_kl', 'map'))
  np.testing.assert_allclose(per_map, per_channel.reshape(1, -1, 4).mean(-1), rtol=1e-6)
  # The informative maps score highest.
  assert set(np.argsort(-per_map[0])[:3].tolist()) == INFORMATIVE
