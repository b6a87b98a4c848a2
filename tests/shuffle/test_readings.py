"""The Shuffle's readings (model.shuffle_mode): which gradients reach S and G, a
solver that settles, λ that matters, exact bijections, and old configs' meaning."""
import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import eiw_jax
from eiw_jax import shuffle
from eiw_jax.train.run_config import structure_difference as _structure_difference
from eiw_jax.train.config import LEGACY_VALUES, base_config, upgrade
from eiw_jax.train.settings import check_shuffle_rates
from eiw_jax.errors import UserError
from eiw_jax.losses import LN2, objective
from eiw_jax.shuffle.base import FIT_COLLECTION
from eiw_jax.train.optimizer import make_optimizer


def tiny_config(mode, kl_weight=1e-3, **model):
  return ml_collections.ConfigDict(dict(
      model=eiw_jax.model_config(num_scales=2, num_steps=1, hidden=8, shuffle_reduction=4,
                                 shuffle_mode=mode, kl_weight=kl_weight, **model),
      data=dict(image_size=8, channels=1, num_bits=8)))


IMAGES = jax.random.randint(jax.random.key(0), (4, 8, 8, 1), 0, 256)


@functools.lru_cache(maxsize=None)
def grads_at_zero_lambda(mode):
  """Gradients of the training loss with λ = 0 at one shared initialisation."""
  model = eiw_jax.build(tiny_config(mode, kl_weight=0.0))
  v = eiw_jax.init(model, jax.random.key(1), IMAGES)
  v = {**v, 'params': jax.tree.map(lambda x: x, v['params'])}
  fn = lambda p: eiw_jax.loss(model, {**v, 'params': p}, IMAGES, jax.random.key(2))[0]
  return jax.grad(fn)(v['params'])


def _abs_sum(tree):
  return float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(tree)))


def test_likelihood_reaches_the_guider_even_with_zero_lambda():
  g = grads_at_zero_lambda('likelihood')['flow']['shuffle_0']
  assert _abs_sum(g['guider']) > 0
  assert _abs_sum(g['solver']) == 0  # λ = 0: the KL, the solver's only signal, is off


def test_kl_reading_gives_the_shuffle_nothing_with_zero_lambda():
  g = grads_at_zero_lambda('kl')['flow']['shuffle_0']
  assert _abs_sum(g['guider']) == 0 and _abs_sum(g['solver']) == 0


def test_guider_target_trains_no_flow_parameter():
  # The likelihood reading's fitting loss holds u_k constant: every flow gradient
  # equals the 'kl' reading's at λ = 0 (where the Shuffle adds nothing).
  lik, kl = grads_at_zero_lambda('likelihood'), grads_at_zero_lambda('kl')
  strip = lambda g: {k: v for k, v in g['flow'].items() if not k.startswith('shuffle_')}
  chex.assert_trees_all_close(strip(lik), strip(kl), rtol=1e-6, atol=1e-6)
  assert _abs_sum(strip(lik)) > 0


def settings(mode='likelihood', **kw):
  return shuffle.ShuffleSettings(mode=mode, **kw)


def test_nll_target_ranks_channels_by_their_prior_cost():
  # statistics.py: 'nll' ranks the narrowest channels lowest (they are factored out).
  scales = jnp.array([0.1, 3.0, 1.0, 0.5])
  u = jax.random.normal(jax.random.key(0), (2, 8, 8, 4)) * scales
  t = shuffle.likelihood.unit_target(u, 'nll')
  np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(np.argsort(-np.asarray(t), axis=-1), [[1, 2, 3, 0]] * 2)
  # n_bc by hand: 0.5 mean(u^2) + 0.5 log(2 pi).
  np.testing.assert_allclose(shuffle.channel_nll(u)[0, 1],
                             0.5 * np.mean(np.square(np.asarray(u)[0, ..., 1])) +
                             0.5 * np.log(2 * np.pi), rtol=1e-5)


def test_guider_fit_by_hand():
  n = 8
  u = jax.random.normal(jax.random.key(0), (3, 2, 2, n)) * jnp.arange(1, n + 1)
  sh = shuffle.make_shuffle(settings(reduction=2, statistic='nll'), n)
  v = sh.init(jax.random.key(1), u, method='forward')
  (_, kl), sown = sh.apply(v, u, method='forward_with_kl', mutable=[FIT_COLLECTION])
  (fit,) = jax.tree.leaves(sown)
  u64 = np.asarray(u, np.float64)
  nll = 0.5 * np.mean(u64**2, axis=(1, 2)) + 0.5 * np.log(2 * np.pi)
  z = (nll - nll.mean(-1, keepdims=True)) / nll.std(-1, keepdims=True)
  target = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
  p = np.asarray(sh.apply(v, u, method='guide'), np.float64)
  np.testing.assert_allclose(float(fit), -np.mean(np.sum(target * np.log(p), -1)), rtol=1e-5)
  q = np.full(n, 1.0 / n)  # uniform Q at init
  np.testing.assert_allclose(float(kl), np.mean(np.sum(p * np.log(p / q), -1)), rtol=1e-4)


def test_divergence_statistic_by_hand_and_its_oracle_order():
  scales = jnp.array([0.1, 1.0, 3.0, 1.1])
  u = jax.random.normal(jax.random.key(0), (2, 8, 8, 4)) * scales + jnp.array([0, 0, 0, 0.5])
  d = np.asarray(shuffle.channel_divergence(u))
  u64 = np.asarray(u, np.float64)
  m, v = u64.mean(axis=(1, 2)), u64.var(axis=(1, 2))
  np.testing.assert_allclose(d, 0.5 * (v + m**2 - 1 - np.log(v)), rtol=1e-4, atol=1e-6)
  # The oracle fitted to it factors out the channels nearest N(0, 1): 1 and 3.
  sh = shuffle.make_shuffle(settings('oracle', statistic='divergence'), 4)
  target = d.mean(0)
  order = sh.apply({'params': {'stats': jnp.asarray(target)}}, method='permutation')
  assert sorted(np.asarray(order)[2:].tolist()) == [1, 3]


@pytest.mark.parametrize('mode', ['random', 'oracle'])
def test_parameter_free_readings_are_exact_bijections(mode):
  n = 12
  u = jax.random.normal(jax.random.key(3), (2, 3, 3, n))
  sh = shuffle.make_shuffle(settings(mode, seed=7), n, transition=1)
  v = sh.init(jax.random.key(0), u, method='forward')
  if mode == 'oracle':
    v = {'params': {'stats': jax.random.normal(jax.random.key(4), (n,))}}
  y, ld = sh.apply(v, u, method='forward')
  assert not np.array_equal(y, u)
  x, ld_inv = sh.apply(v, y, method='inverse')
  np.testing.assert_array_equal(x, u)
  np.testing.assert_array_equal(ld, 0.0)
  np.testing.assert_array_equal(ld_inv, 0.0)
  perm = np.asarray(sh.apply(v, method='permutation'))
  np.testing.assert_array_equal(y, np.asarray(u)[..., perm])


def test_random_permutation_is_seeded_per_transition():
  def order(seed, k):
    sh = shuffle.make_shuffle(settings('random', seed=seed), 16, transition=k)
    return tuple(np.asarray(sh.apply({}, method='permutation')))
  orders = {(seed, k): order(seed, k) for seed in (0, 1) for k in (0, 1)}
  assert len(set(orders.values())) == 4
  assert order(1, 1) == orders[(1, 1)]
  assert shuffle.make_shuffle(settings('random'), 16).init(
      jax.random.key(0), jnp.zeros((1, 1, 1, 16)), method='forward') == {}


def test_oracle_statistic_is_a_moving_average_of_the_channel_cost():
  n, rate = 6, 0.25
  cfg = base_config(name='x', image_size=4, channels=1, batch_size=1, train_steps=1)
  cfg.optim.oracle_rate = rate
  sh = shuffle.make_shuffle(settings('oracle'), n)
  u = jax.random.normal(jax.random.key(0), (3, 2, 2, n)) * jnp.arange(1, n + 1)
  params = sh.init(jax.random.key(0), u, method='forward')['params']
  opt = make_optimizer(cfg.optim)
  tree = {'flow': {'shuffle_0': params}}
  state = opt.init(tree)

  def fit(p):
    _, sown = sh.apply({'params': p['flow']['shuffle_0']}, u, method='forward_with_kl',
                       mutable=[FIT_COLLECTION])
    return sum(jax.tree.leaves(sown))

  updates, _ = opt.update(jax.grad(fit)(tree), state, tree)
  new = optax.apply_updates(tree, updates)['flow']['shuffle_0']['stats']
  target = np.asarray(shuffle.dataset_kl(u))[0]  # one value per channel over the batch
  np.testing.assert_allclose(new, rate * target, rtol=1e-5)  # s <- s + rate (n - s), s = 0


def _synthetic_u(key, n, batch=16):
  """u_k whose channels have fixed, distinct scales (their prior cost) and fresh noise."""
  scales = jnp.exp(jax.random.uniform(jax.random.key(99), (n,), minval=-1.0, maxval=1.0))
  return jax.random.normal(key, (batch, 4, 4, n)) * scales, scales


def _train_shuffle(n, lambdas, steps, optim_updates=None, refresh_every=100):
  """Trains a LikelihoodShuffle alone on synthetic u_k as train_step does (guider:
  Adamax at the flow's rate; solver: its own SGD; the shuffler's order refreshed by
  its own training apply every `refresh_every` steps). Returns per λ: (per step, the
  factored-out masks of the live Q after the update and of the order the step used;
  the final live Q)."""
  cfg = base_config(name='x', image_size=4, channels=1, batch_size=1, train_steps=1)
  cfg.optim.update(warmup_steps=20, **(optim_updates or {}))
  opt = make_optimizer(cfg.optim)
  flow = eiw_jax.MultiScaleFlow(num_scales=2, body=None,
                                shuffle_settings=settings(refresh_every=refresh_every))
  sh = shuffle.make_shuffle(flow.shuffle_settings, n)
  u0, _ = _synthetic_u(jax.random.key(0), n)
  v = sh.init(jax.random.key(1), u0, method='forward')
  params = {'flow': {'shuffle_0': v['params']}}
  consts = {'shuffle_0': v.get('consts', {})}

  def loss(p, c, u, lam):
    (_, kl), state = sh.apply({'params': p['flow']['shuffle_0'], 'consts': c['shuffle_0']}, u,
                              method='forward_with_kl', mutable=[FIT_COLLECTION, 'consts'])
    return lam * kl + sum(jax.tree.leaves(state[FIT_COLLECTION])), state.get('consts', {})

  @jax.jit
  def run(lam):
    def step(carry, key):
      p, s, c = carry
      u, _ = _synthetic_u(key, n)
      grads, new = jax.grad(loss, has_aux=True)(p, c, u, lam)
      c = {'shuffle_0': new}
      updates, s = opt.update(grads, s, p)
      p = optax.apply_updates(p, updates)
      (live,) = shuffle.transition_permutations(flow, p['flow'])
      (used,) = shuffle.transition_permutations(flow, p['flow'], flow_consts=c)
      masks = [shuffle.factored_mask(x) for x in (live, used)]
      return (p, s, c), jnp.stack(masks)

    keys = jax.random.split(jax.random.key(2), steps)
    (p, _, _), masks = jax.lax.scan(step, (params, opt.init(params), consts), keys)
    return masks[:, 0], masks[:, 1], jax.nn.softmax(shuffle.transition_scores(flow, p['flow'])[0])

  return [run(jnp.float32(lam)) for lam in lambdas]


def _changes(masks):
  masks = np.asarray(masks)
  return np.any(masks[1:] != masks[:-1], axis=-1)  # [steps - 1]: step i+1 changed the set


@pytest.mark.parametrize('n', [248, 616])  # DenseFlow-74-10's 4C at its two transitions
def test_split_settles_at_paper_channel_counts(n):
  steps = 400
  (live, used, q), = _train_shuffle(n, [1e-3], steps)
  # The split the flow sees changes only at refreshes: the steps after 100, 200, ...
  # updates (steps 101, 201, ...), at most 1% of the steps. The first refresh (at
  # step 1, from the initial Q) leaves the identity.
  used_changes = _changes(used)  # index i: step i + 2 changed the set
  changed_at = used_changes.nonzero()[0] + 2
  assert changed_at[0] == 101 and np.all(changed_at % 100 == 1), changed_at
  assert used_changes.sum() <= steps // 100
  # Step 301 uses the order the live Q had after update 300.
  np.testing.assert_array_equal(np.asarray(used)[300], np.asarray(live)[299])
  # The live Q settles: its set changes less often late than early.
  live_changes = _changes(live)
  assert live_changes[300:].sum() < live_changes[:100].sum()
  # The channels furthest from the N(0, 1) prior go on (statistics.dataset_kl).
  _, scales = _synthetic_u(jax.random.key(0), n)
  s2 = np.asarray(scales, np.float64) ** 2
  expected = np.zeros(n, bool)
  expected[np.argsort(-(s2 - 1 - np.log(s2)))[:n // 2]] = True
  assert (~np.asarray(used)[-1] == expected).mean() >= 0.75
  assert float(-jnp.sum(q * jnp.log(q))) < np.log(n)  # Q has left uniform


def test_lambda_changes_q():
  (_, _, q_big), (_, _, q_small) = _train_shuffle(64, [1e-1, 1e-4], 100)
  gap = float(jnp.max(jnp.abs(jnp.log(q_big) - jnp.log(q_small))))
  assert gap > 0.1, gap


def test_freeze_fixes_the_permutation():
  (live, _, _), = _train_shuffle(64, [1e-1], 60, dict(shuffle_freeze_after=5), refresh_every=1)
  changes = _changes(live)
  assert changes[:4].any() and not changes[4:].any()


def test_solver_input_normalized_keeps_updates_small():
  # One SGD step on λ KL: the logits move by ~λ lr / 4 per unit of relative gap,
  # with the normalised input; the raw count 616 multiplies the first layer's scale.
  def logit_step(solver_input):
    sh = shuffle.make_shuffle(settings('kl', solver_input=solver_input), 616)
    u = jax.random.normal(jax.random.key(0), (4, 2, 2, 616))
    v = sh.init(jax.random.key(1), u, method='forward')
    g = jax.grad(lambda p: 1e-3 * sh.apply({'params': p}, u, method='forward_with_kl')[1])(
        v['params'])
    new = jax.tree.map(lambda p, d: p - 20.0 * d, v['params'], g)
    return float(jnp.max(jnp.abs(sh.apply({'params': new}, method='scores'))))
  small, raw = logit_step('normalized'), logit_step('count')
  assert small < 0.05 and raw > 100 * small


def test_kl_in_bits_per_dim_weighs_d_ln2_more():
  lp, kls = jnp.array([-100.0, -120.0]), jnp.array([0.5])
  nats, _ = objective(lp, kls, 64, 1e-3, 'nats')
  bpd, m = objective(lp, kls, 64, 1e-3, 'bpd')
  np.testing.assert_allclose(float(bpd), 110.0 + 1e-3 * 0.5 * 64 * LN2, rtol=1e-7)
  np.testing.assert_allclose(float(nats), 110.0 + 1e-3 * 0.5, rtol=1e-7)
  np.testing.assert_allclose(float(m['loss_bpd']), 110.0 / (64 * LN2) + 1e-3 * 0.5, rtol=1e-6)


def test_overshooting_solver_rate_is_refused():
  cfg = base_config(name='x', image_size=28, channels=1, batch_size=1, train_steps=1)
  check_shuffle_rates(cfg)  # the defaults pass
  cfg.model.kl_units = 'bpd'
  with pytest.raises(UserError, match='shuffle_lr below'):
    check_shuffle_rates(cfg)


def test_configs_saved_before_the_modes_keep_their_meaning():
  cfg = tiny_config('likelihood')
  old = ml_collections.ConfigDict(cfg.to_dict())
  added = ('shuffle_mode', 'solver_input', 'shuffle_statistic', 'shuffle_unit',
           'shuffle_halves', 'guider_min_width', 'shuffle_permutations')
  for key in added:
    del old.model[key]
  with pytest.raises(UserError, match="config.model has no key 'shuffle_mode'"):
    eiw_jax.build(old)  # the library takes today's keys; a saved config is upgraded first
  s = eiw_jax.build(upgrade(old)).flow.shuffle_settings
  assert (s.mode, s.solver_input, s.statistic, s.unit, s.halves, s.guider_min_width,
          s.permutations) == ('kl', 'count', 'nll', 'channel', 'sorted', 1, ())
  saved = {'model': old.model.to_dict(), 'optim': {}}
  diff = _structure_difference(saved, {'model': cfg.model.to_dict(), 'optim': {}})
  assert diff[0] == 'model.guider_min_width' and diff[1] == '1'
  legacy = {k: LEGACY_VALUES.get(f'model.{k}', []) for k in added}
  new = {'model': {**cfg.model.to_dict(), **legacy},
         'optim': {'shuffle_optimizer': LEGACY_VALUES['optim.shuffle_optimizer']}}
  assert _structure_difference(saved, new) is None


def test_model_config_refuses_unknown_keys():
  with pytest.raises(UserError, match="unknown model key 'shuffle_mod'; did you mean shuffle_mode"):
    eiw_jax.model_config(shuffle_mod='kl')
  with pytest.raises(UserError, match='shuffle_mode must be one of'):
    eiw_jax.build(tiny_config('entropy'))


@pytest.mark.parametrize('mode', ['likelihood', 'random'])
def test_shuffle_info_reports_the_permutation_in_use(mode):
  model = eiw_jax.build(tiny_config(mode))
  v = eiw_jax.init(model, jax.random.key(1), IMAGES)
  (state,) = eiw_jax.shuffle_info(model, v)
  y = eiw_jax.to_continuous(IMAGES, 8)
  if mode == 'likelihood':
    np.testing.assert_array_equal(state['perm'], np.arange(16))  # no refresh yet: identity
    np.testing.assert_allclose(state['q'], np.full(16, 1 / 16), rtol=1e-6)
  else:
    assert state['q'] is None and not np.array_equal(state['perm'], np.arange(16))
  assert int(state['factored'].sum()) == 8
  np.testing.assert_array_equal(np.nonzero(state['factored'])[0], np.sort(state['perm'][8:]))
  assert eiw_jax.shuffle_info(eiw_jax.build(tiny_config(mode, shuffle=False)), v) == []


def test_fixed_order_continues_a_vanilla_model():
  vanilla = eiw_jax.build(tiny_config('likelihood', shuffle=False))
  v = eiw_jax.init(vanilla, jax.random.key(1), IMAGES)
  identity = eiw_jax.build(tiny_config('fixed', shuffle_permutations=[list(range(16))]))
  swapped = list(range(16))
  swapped[2], swapped[12] = swapped[12], swapped[2]  # channel 2 out, channel 12 on
  fixed = eiw_jax.build(tiny_config('fixed', shuffle_permutations=[swapped]))
  # The same variables: a vanilla checkpoint restores as it is.
  chex.assert_trees_all_equal_shapes_and_dtypes(
      v, eiw_jax.init(fixed, jax.random.key(1), IMAGES))
  lp = eiw_jax.log_prob(vanilla, v, IMAGES)
  np.testing.assert_array_equal(eiw_jax.log_prob(identity, v, IMAGES), lp)
  assert not np.allclose(eiw_jax.log_prob(fixed, v, IMAGES), lp)
  (info,) = eiw_jax.shuffle_info(fixed, v)
  np.testing.assert_array_equal(info['perm'], swapped)
  y = eiw_jax.to_continuous(IMAGES, 8)
  latents, _ = eiw_jax.forward(fixed, v, y)
  np.testing.assert_allclose(eiw_jax.inverse(fixed, v, latents)[0], y, atol=1e-5)
  # The checkpoint's structure check lets the order change between parameter-free
  # Shuffles, not towards one with parameters.
  as_dict = lambda c: {'model': c.model.to_dict(), 'optim': {}}
  assert _structure_difference(as_dict(tiny_config('likelihood', shuffle=False)),
                               as_dict(tiny_config('fixed', shuffle_permutations=[swapped])))is None
  assert _structure_difference(as_dict(tiny_config('likelihood', shuffle=False)),
                               as_dict(tiny_config('likelihood'))) is not None


@pytest.mark.parametrize('orders,message', [
    ([], 'one order of units per transition'),
    ([[0, 1, 2]], r'permutation of 0\.\.15'),
    ([[0, 0] + list(range(2, 16))], r'permutation of 0\.\.15'),
    ([['a']], 'list of lists of integers'),
])
def test_fixed_order_errors_name_the_key(orders, message):
  with pytest.raises(UserError, match=message):
    model = eiw_jax.build(tiny_config('fixed', shuffle_permutations=orders))
    eiw_jax.init(model, jax.random.key(1), IMAGES)


@pytest.mark.parametrize('halves', ['sorted', 'keep_order'])
def test_split_changes_count_reorders_within_a_half(halves):
  flow = eiw_jax.MultiScaleFlow(num_scales=2, body=None,
                                shuffle_settings=settings('oracle', halves=halves))
  version = lambda stats: {'params': {'shuffle_0': {'stats': jnp.asarray(stats, jnp.float32)}},
                           'consts': {}}
  old = version([4.0, 3.0, 2.0, 1.0])
  reordered = shuffle.split_changes(flow, old, version([3.0, 4.0, 2.0, 1.0]))
  moved = shuffle.split_changes(flow, old, version([1.0, 3.0, 2.0, 4.0]))
  assert int(moved['split_changed_1']) == 1 and int(moved['order_changed_1']) == 0
  assert int(reordered['split_changed_1']) == 0
  assert int(reordered['order_changed_1']) == (1 if halves == 'sorted' else 0)
