"""The Shuffle's parts (paper §3.2-3.5): solver, shuffler, guider, KL."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eiw_jax.shuffle import Guider, Shuffle, Solver, channel_order, kl_divergence

C4 = 16


@pytest.fixture(scope='module')
def shuffle_vars():
  u = jax.random.normal(jax.random.key(0), (3, 2, 2, C4))
  sh = Shuffle(C4, reduction=4)
  v = sh.init(jax.random.key(1), u, method='forward')
  return sh, v, u


def _with_q_logits(v, logits):
  """Variables whose solver outputs exactly `logits` (zero last kernel, bias = logits)."""
  params = jax.tree.map(lambda x: x, v['params'])
  params['solver']['out'] = {'kernel': jnp.zeros_like(params['solver']['out']['kernel']),
                             'bias': jnp.asarray(logits, jnp.float32)}
  return {**v, 'params': params}


def test_solver_shapes_and_initial_uniform_q(shuffle_vars):
  sh, v, _ = shuffle_vars
  q = sh.apply(v, method='weights')
  assert q.shape == (C4,)
  np.testing.assert_allclose(float(q.sum()), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(q, jnp.full((C4,), 1.0 / C4))
  # Paper's layer sizes: W1 2C x 1, last 4C x 2C.
  assert v['params']['solver']['Dense_0']['kernel'].shape == (1, C4 // 2)
  assert v['params']['solver']['out']['kernel'].shape == (C4 // 2, C4)


def test_uniform_q_is_identity_permutation(shuffle_vars):
  sh, v, u = shuffle_vars
  y, ld = sh.apply(v, u, method='forward')
  np.testing.assert_array_equal(y, u)
  np.testing.assert_array_equal(ld, 0.0)


def test_shuffler_permutation_follows_q_and_inverse_is_exact(shuffle_vars):
  sh, v, u = shuffle_vars
  logits = jax.random.normal(jax.random.key(5), (C4,))
  v2 = _with_q_logits(v, logits)
  perm = np.asarray(channel_order(logits))
  assert sorted(perm.tolist()) == list(range(C4))  # a valid permutation
  q = np.asarray(jax.nn.softmax(logits))
  assert np.all(np.diff(q[perm]) <= 0)  # descending Q
  y, ld = sh.apply(v2, u, method='forward')
  np.testing.assert_array_equal(y, u[..., perm])
  assert not np.array_equal(y, u)
  np.testing.assert_array_equal(ld, 0.0)
  x, ld_inv = sh.apply(v2, y, method='inverse')
  np.testing.assert_array_equal(x, u)  # exact, not approximate
  np.testing.assert_array_equal(ld_inv, 0.0)
  # Changing Q's order changes the permutation.
  perm_rev = np.asarray(channel_order(-logits))
  assert not np.array_equal(perm, perm_rev)
  np.testing.assert_array_equal(perm_rev, perm[::-1])


def test_stable_argsort_on_ties():
  logits = jnp.array([0.0, 1.0, 0.0, 1.0, 0.5])
  np.testing.assert_array_equal(channel_order(logits), [1, 3, 4, 0, 2])


def test_permutation_changes_under_jit_without_recompiling(shuffle_vars):
  sh, v, u = shuffle_vars
  traces = []

  @jax.jit
  def fwd(v, u):
    traces.append(1)
    return sh.apply(v, u, method='forward')[0]

  outs = [fwd(_with_q_logits(v, jax.random.normal(jax.random.key(i), (C4,))), u)
          for i in range(3)]
  assert len(traces) == 1
  assert not np.array_equal(outs[0], outs[1])


def test_guider_and_kl(shuffle_vars):
  sh, v, u = shuffle_vars
  p = sh.apply(v, u * 3.0, method='guide')
  assert p.shape == (3, C4)
  np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
  # Hidden width is floor(4C / r).
  assert v['params']['guider']['Dense_0']['kernel'].shape == (C4, C4 // 4)
  _, kl = sh.apply(v, u * 3.0, method='forward_with_kl')
  q = np.full(C4, 1.0 / C4)
  p64 = np.asarray(p, np.float64)
  expected = np.mean(np.sum(p64 * (np.log(p64) - np.log(q)), -1))
  np.testing.assert_allclose(float(kl), expected, rtol=1e-4)
  assert float(kl) > 0


def test_kl_properties():
  p_logits = jax.random.normal(jax.random.key(0), (5, 8)) * 2
  q_logits = jax.random.normal(jax.random.key(1), (8,))
  assert float(kl_divergence(p_logits, q_logits)) > 0
  np.testing.assert_allclose(float(kl_divergence(q_logits[None], q_logits)), 0.0, atol=1e-7)
  # Invariant to adding a constant to logits (softmax).
  np.testing.assert_allclose(kl_divergence(p_logits + 3.0, q_logits - 1.0),
                             kl_divergence(p_logits, q_logits), rtol=1e-5)


def test_kl_gradient_readings(shuffle_vars):
  sh_full, v, u = shuffle_vars
  sh_stop = Shuffle(C4, reduction=4, kl_grad_to_guider=False)

  def grads(sh):
    return jax.grad(lambda p: sh.apply({'params': p}, u, method='forward_with_kl')[1])(v['params'])

  g_full, g_stop = grads(sh_full), grads(sh_stop)
  norm = lambda t: float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(t)))
  assert norm(g_full['guider']) > 0 and norm(g_full['solver']) > 0
  assert norm(g_stop['guider']) == 0 and norm(g_stop['solver']) > 0


def test_channel_mismatch_is_an_error(shuffle_vars):
  sh, v, _ = shuffle_vars
  with pytest.raises(ValueError, match='16 channels'):
    sh.apply(v, jnp.zeros((1, 2, 2, 8)), method='forward')


def test_solver_rejects_too_few_layers():
  with pytest.raises(ValueError, match='num_layers'):
    Solver(8, num_layers=1).init(jax.random.key(0))


def test_guider_output_depends_on_input():
  g = Guider(8, reduction=2)
  u = jax.random.normal(jax.random.key(0), (2, 2, 2, 8))
  v = g.init(jax.random.key(1), u)
  out = g.apply(v, u)
  assert not np.allclose(out[0], out[1])
