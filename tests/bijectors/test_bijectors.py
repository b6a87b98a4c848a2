"""The bijector battery (distrax-style), run on every core bijector with random,
non-identity parameters: round trip, forward logdet = -inverse logdet, logdet
against a brute-force Jacobian, and shape errors."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import brute_force_logdet, perturb

from eiw_jax.bijectors import (ActNorm, Coupling, InvConv1x1, Permute, Squeeze,
                               fixed_permutation, squeeze, unsqueeze)
from eiw_jax.backbones.glow import GlowStep
from eiw_jax.flow import Standardize
from eiw_jax.nets import ConvNet

NET = functools.partial(ConvNet, hidden=8)
LAYERS = {
    'actnorm': ActNorm(),
    'invconv_lu': InvConv1x1(lu=True),
    'invconv_plain': InvConv1x1(lu=False),
    'coupling_affine': Coupling(NET),
    'coupling_additive': Coupling(NET, affine=False),
    'coupling_odd_channels': Coupling(NET),
    'squeeze': Squeeze(),
    'permute_reverse': Permute('reverse'),
    'permute_swap': Permute('swap'),
    'permute_random': Permute('random', seed=3),
    'glow_step': GlowStep(hidden=8),
    'standardize_base': Standardize(),
}
# Coupling with an odd channel count splits ceil(C/2) / floor(C/2).
CHANNELS = {'coupling_odd_channels': 3}


@pytest.fixture(scope='module', params=sorted(LAYERS))
def case(request):
  name = request.param
  layer = LAYERS[name]
  c = CHANNELS.get(name, 4)
  x = jax.random.normal(jax.random.key(0), (3, 4, 4, c)) * 1.5 + 0.3
  variables = layer.init(jax.random.key(1), x, method='forward')
  variables = perturb(variables, jax.random.key(2))
  fwd = jax.jit(lambda v, x: layer.apply(v, x, method='forward'))
  inv = jax.jit(lambda v, y: layer.apply(v, y, method='inverse'))
  return name, layer, variables, x, fwd, inv


def test_round_trip(case):
  _, _, v, x, fwd, inv = case
  y, _ = fwd(v, x)
  x_rec, _ = inv(v, y)
  assert x_rec.shape == x.shape
  assert float(jnp.max(jnp.abs(x_rec - x))) <= 1e-5


def test_logdet_shape_and_sign(case):
  _, _, v, x, fwd, inv = case
  y, ld_fwd = fwd(v, x)
  _, ld_inv = inv(v, y)
  assert ld_fwd.shape == (x.shape[0],) and ld_fwd.dtype == jnp.float32
  np.testing.assert_allclose(ld_fwd, -ld_inv, rtol=1e-5, atol=1e-5)


def test_logdet_matches_jacobian(case):
  name, layer, v, x, _, _ = case
  x1 = x[:1]  # 1 x 4 x 4 x C <= 64 dims
  y, ld = layer.apply(v, x1, method='forward')
  expected = brute_force_logdet(lambda z: layer.apply(v, z, method='forward')[0], x1)
  np.testing.assert_allclose(float(ld[0]), expected, rtol=1e-4, atol=1e-4)
  if name not in ('squeeze', 'coupling_additive') and not name.startswith('permute'):
    assert abs(expected) > 1e-3, 'parameters should make this layer non volume preserving'


def test_layer_is_not_identity(case):
  name, _, v, x, fwd, _ = case
  y, _ = fwd(v, x)
  if name != 'squeeze':
    assert float(jnp.max(jnp.abs(y - x))) > 1e-2


def test_zero_initialised_coupling_is_identity():
  layer = Coupling(NET)
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
  v = layer.init(jax.random.key(1), x, method='forward')
  y, ld = layer.apply(v, x, method='forward')
  np.testing.assert_array_equal(y, x)
  np.testing.assert_array_equal(ld, 0.0)


def test_actnorm_data_dependent_init_and_zero_variance():
  x = jax.random.normal(jax.random.key(0), (8, 4, 4, 3)) * 3.0 + 2.0
  x = x.at[..., 1].set(5.0)  # a constant channel
  v = ActNorm().init(jax.random.key(1), x, method='forward')
  y, ld = ActNorm().apply(v, x, method='forward')
  assert np.all(np.isfinite(y)) and np.all(np.isfinite(ld))
  np.testing.assert_allclose(jnp.mean(y, axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(jnp.std(y[..., 0]), 1.0, rtol=1e-4)
  np.testing.assert_allclose(jnp.std(y[..., 2]), 1.0, rtol=1e-4)
  assert float(v['params']['log_scale'][1]) == 0.0
  # Applying to other data uses the stored values: no re-initialisation.
  y2, _ = ActNorm().apply(v, x * 10.0, method='forward')
  assert float(jnp.std(y2[..., 0])) > 5.0


def test_invconv_lu_consts_are_a_permutation_and_signs():
  x = jax.random.normal(jax.random.key(0), (2, 2, 2, 6))
  v = InvConv1x1().init(jax.random.key(1), x, method='forward')
  perm, sign = np.asarray(v['consts']['perm']), np.asarray(v['consts']['sign'])
  np.testing.assert_array_equal(np.sort(perm.sum(0)), np.ones(6))
  assert set(np.abs(sign).tolist()) == {1.0}
  assert 'perm' not in v['params']


def test_squeeze_layout_and_shape_errors():
  x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
  y = squeeze(x)
  assert y.shape == (2, 2, 2, 12)
  # channel c*4 + 2*dy + dx holds x[2h+dy, 2w+dx, c]
  np.testing.assert_array_equal(y[1, 1, 0, 2 * 4 + 2 * 1 + 1], x[1, 3, 1, 2])
  np.testing.assert_array_equal(unsqueeze(y), x)
  with pytest.raises(ValueError, match='even'):
    squeeze(jnp.zeros((1, 3, 4, 1)))
  with pytest.raises(ValueError, match='divisible by 4'):
    unsqueeze(jnp.zeros((1, 2, 2, 6)))
  with pytest.raises(ValueError, match='at least 2 channels'):
    Coupling(NET).init(jax.random.key(0), jnp.zeros((1, 2, 2, 1)), method='forward')


@pytest.mark.parametrize('mode', ['reverse', 'swap'])
def test_block_permutations_are_the_index_permutation_without_a_scatter(mode):
  """'reverse' and 'swap' are the permutation fixed_permutation names, both ways, for
  odd and even channel counts, and their gradient needs no scatter (XLA:CPU's loop)."""
  for c in (1, 5, 6):
    x = np.arange(2 * c, dtype=np.float32).reshape(1, 1, 2, c)
    y, _ = Permute(mode).apply({}, x)
    np.testing.assert_array_equal(y, np.take(x, fixed_permutation(c, mode), axis=-1))
    np.testing.assert_array_equal(Permute(mode).apply({}, y, inverse=True)[0], x)
  grad = jax.grad(lambda x: jnp.sum(Permute(mode).apply({}, x)[0] * jnp.arange(6.0)))
  assert 'scatter' not in str(jax.make_jaxpr(grad)(x))
  np.testing.assert_array_equal(grad(x), np.take(np.arange(6.0), np.argsort(
      fixed_permutation(6, mode)))[None, None, None].repeat(2, axis=2))
