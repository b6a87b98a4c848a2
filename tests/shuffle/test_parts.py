"""The Shuffle's parts (paper §3.2-3.5): solver, shuffler, guider, KL."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eiw_jax.shuffle import (Guider, ShuffleSettings, Solver, channel_order, kl_divergence,
                             make_shuffle, unit_order)

C4 = 16


def kl_shuffle(n=C4, **settings):
  """Reading 'kl' with every channel a unit and the paper's guider width 4C // r."""
  settings = dict(dict(mode='kl', reduction=4, guider_min_width=1), **settings)
  return make_shuffle(ShuffleSettings(**settings), n)


@pytest.fixture(scope='module')
def shuffle_vars():
  u = jax.random.normal(jax.random.key(0), (3, 2, 2, C4))
  sh = kl_shuffle(halves='sorted')
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
  q = jax.nn.softmax(sh.apply(v, method='scores'))
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


def test_keep_order_halves_choose_only_the_split(shuffle_vars):
  _, v, u = shuffle_vars
  sh = kl_shuffle()  # halves='keep_order', the default
  logits = jax.random.normal(jax.random.key(5), (C4,))
  v2 = _with_q_logits(v, logits)
  sorted_perm = np.asarray(channel_order(logits))
  perm = np.asarray(sh.apply(v2, method='permutation'))
  # The same channels go on (the C4 / 2 largest Q) ...
  assert set(perm[:C4 // 2]) == set(sorted_perm[:C4 // 2])
  # ... each half in its order in u_k.
  np.testing.assert_array_equal(perm[:C4 // 2], np.sort(sorted_perm[:C4 // 2]))
  np.testing.assert_array_equal(perm[C4 // 2:], np.sort(sorted_perm[C4 // 2:]))
  y, _ = sh.apply(v2, u, method='forward')
  np.testing.assert_array_equal(y, np.asarray(u)[..., perm])
  np.testing.assert_array_equal(sh.apply(v2, y, method='inverse')[0], u)
  # A change of scores that keeps the set changes nothing.
  kept = np.zeros(C4, bool)
  kept[sorted_perm[:C4 // 2]] = True
  shuffled = np.where(kept, 10.0 + np.arange(C4)[::-1], -np.arange(C4))
  np.testing.assert_array_equal(unit_order(jnp.asarray(shuffled)), perm)


def test_map_unit_moves_whole_feature_maps():
  n = 16  # 4 maps of 4 sub-positions
  u = jax.random.normal(jax.random.key(0), (2, 3, 3, n))
  for halves in ('keep_order', 'sorted'):
    sh = kl_shuffle(n, unit='map', halves=halves)
    v = sh.init(jax.random.key(1), u, method='forward')
    assert v['params']['solver']['out']['bias'].shape == (4,)  # one Q entry per map
    assert sh.apply(v, u, method='guide').shape == (2, 4)
    v = _with_q_logits(v, jnp.array([0.0, 1.0, -1.0, 2.0]))  # maps 3 and 1 go on
    perm = np.asarray(sh.apply(v, method='permutation'))
    maps = [1, 3, 0, 2] if halves == 'keep_order' else [3, 1, 0, 2]
    np.testing.assert_array_equal(perm, (4 * np.array(maps)[:, None] + np.arange(4)).ravel())
    y, ld = sh.apply(v, u, method='forward')
    np.testing.assert_array_equal(y, np.asarray(u)[..., perm])
    x, ld_inv = sh.apply(v, y, method='inverse')
    np.testing.assert_array_equal(x, u)
    np.testing.assert_array_equal(ld, 0.0)
    np.testing.assert_array_equal(ld_inv, 0.0)
  with pytest.raises(ValueError, match='divisible by 8'):
    kl_shuffle(12, unit='map').init(jax.random.key(1), jnp.zeros((1, 1, 1, 12)),
                                    method='forward')


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
  # Hidden width is floor(4C / r), here above the floor of 1.
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
  sh_stop = kl_shuffle(halves='sorted', kl_grad_to_guider=False)

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


def test_guider_width_has_a_floor():
  u = jnp.zeros((1, 2, 2, 16))
  width = lambda **kw: Guider(16, **kw).init(jax.random.key(0), u)['params']['Dense_0'][
      'kernel'].shape[1]
  assert width(reduction=16, min_width=1) == 1  # the paper's 4C // r
  assert width(reduction=16) == 8  # the default floor
  assert width(reduction=2) == 8 and width(reduction=1) == 16  # 4C // r above the floor


def test_guider_output_depends_on_input():
  g = Guider(8, reduction=2)
  u = jax.random.normal(jax.random.key(0), (2, 2, 2, 8))
  v = g.init(jax.random.key(1), u)
  out = g.apply(v, u)
  assert not np.allclose(out[0], out[1])
