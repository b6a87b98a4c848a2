"""The functional API as another JAX project calls it: only the public `eiw_jax`
namespace, one tiny model compiled once per function and reused."""
import functools
import inspect
import json
import os
import re

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import eiw_jax
import eiw_jax.bijectors

SHAPE = (8, 8, 1)


def tiny_config(num_bits=8, **model):
  model = dict(dict(num_scales=2, num_steps=1, hidden=8, shuffle_refresh_every=1), **model)
  return ml_collections.ConfigDict(dict(
      model=eiw_jax.model_config(**model),
      data=dict(image_size=SHAPE[0], channels=SHAPE[-1], num_bits=num_bits)))


@pytest.fixture(scope='module')
def tiny():
  model = eiw_jax.build(tiny_config())
  images = jax.random.randint(jax.random.key(0), (4, *SHAPE), 0, 256)
  variables = eiw_jax.init(model, jax.random.key(1), images)
  # A solver that is not uniform: the shuffler really permutes.
  variables = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.5 * jax.random.normal(jax.random.key(len(path)), x.shape)
      if 'solver' in jax.tree_util.keystr(path) else x, variables)
  log_prob = jax.jit(lambda v, x, k: eiw_jax.log_prob(model, v, x, k))
  return model, variables, images, log_prob


# 1. Wrong input is an error, not a plausible number.

def test_log_prob_refuses_continuous_input(tiny):
  model, variables, images, log_prob = tiny
  y = eiw_jax.to_continuous(images, 8)
  with pytest.raises(eiw_jax.UserError, match='expects integer images in .0, 256.*to_continuous'):
    eiw_jax.log_prob(model, variables, y, jax.random.key(0))
  with pytest.raises(eiw_jax.UserError, match='expects integer images'):  # checked when traced
    log_prob(variables, y, jax.random.key(0))


def test_image_values_outside_the_bit_depth_are_refused(tiny):
  model, variables, images, _ = tiny
  with pytest.raises(eiw_jax.UserError, match=r'values must lie in \[0, 256\).*got values in \[-1'):
    eiw_jax.log_prob(model, variables, images - 1, jax.random.key(0))
  four_bit = eiw_jax.build(tiny_config(num_bits=4))
  with pytest.raises(eiw_jax.UserError, match=r'\[0, 16\) for this 4-bit model'):
    eiw_jax.init(four_bit, jax.random.key(1), images)
  with pytest.raises(eiw_jax.UserError, match=r'values must lie in \[0, 16\)'):
    eiw_jax.check_images(four_bit, images)  # the check a caller runs before a jitted call


def test_uint8_images_give_the_same_bound_as_int32(tiny):
  model, variables, images, log_prob = tiny
  key = jax.random.key(3)
  np.testing.assert_array_equal(log_prob(variables, images.astype(jnp.uint8), key),
                                log_prob(variables, images, key))


def test_encode_refuses_integer_images(tiny):
  model, variables, images, _ = tiny
  with pytest.raises(eiw_jax.UserError, match='continuous y.*to_continuous'):
    eiw_jax.encode(model, variables, images)


@pytest.mark.parametrize('shape, match', [
    ((4, 16, 16, 1), r'takes integer images of shape \[B, 8, 8, 1\]; got \(4, 16, 16, 1\)'),
    ((4, 8, 8, 3), r'takes integer images of shape \[B, 8, 8, 1\]; got \(4, 8, 8, 3\)'),
    ((8, 8, 1), r'must have shape \[B, 8, 8, 1\].*add a batch axis'),
    ((0, 8, 8, 1), 'empty batch'),
])
def test_wrong_image_shapes_are_named(tiny, shape, match):
  model, variables, _, _ = tiny
  with pytest.raises(eiw_jax.UserError, match=match):
    eiw_jax.log_prob(model, variables, jnp.zeros(shape, jnp.int32))


def test_sampling_arguments_are_checked(tiny):
  model, variables, _, _ = tiny
  with pytest.raises(eiw_jax.UserError, match='temperature must be >= 0'):
    eiw_jax.sample(model, variables, jax.random.key(0), 2, temperature=-1.0)
  with pytest.raises(eiw_jax.UserError, match='n must be a positive'):
    eiw_jax.sample(model, variables, jax.random.key(0), 0)


# 2 and 7. Config mistakes are named.

def test_model_config_refuses_a_misspelt_key():
  with pytest.raises(eiw_jax.UserError, match="unknown model key 'num_step'; did you mean num_steps"):
    eiw_jax.model_config(num_step=1)
  with pytest.raises(eiw_jax.UserError, match="'hiden'; did you mean hidden"):
    eiw_jax.model_config(hiden=8)


def test_incomplete_or_plain_configs_are_named():
  config = tiny_config()
  del config.data['num_bits']
  with pytest.raises(eiw_jax.UserError, match="config.data has no key 'num_bits'"):
    eiw_jax.build(config)
  with pytest.raises(eiw_jax.UserError, match='must be an ml_collections.ConfigDict, got dict'):
    eiw_jax.build(tiny_config().to_dict())
  with pytest.raises(eiw_jax.UserError, match="config.model has no key 'backbone'.*model_config"):
    eiw_jax.build(ml_collections.ConfigDict(dict(model=dict(num_scales=2),
                                                 data=tiny_config().data.to_dict())))


# 3. load_run reads what train.py wrote, read-only.

def test_load_run_returns_the_trained_variables_and_writes_nothing(tmp_path):
  from eiw_jax.train import config as config_lib, recipes  # how train.py writes a run
  from eiw_jax import train as train_lib  # how train.py writes a run
  config = recipes.smoke(config_lib.base_config(
      name='synthetic', image_size=8, channels=1, batch_size=4, train_steps=2, num_scales=2,
      num_steps=1))
  config.data.update(source='synthetic', num_synthetic=16)
  config.data.batch_size = 4
  config.train.update(num_steps=2, log_every=2, eval_every=100, checkpoint_every=2, eval_examples=4)
  workdir = str(tmp_path)
  train_lib.train_and_evaluate(config, workdir)

  def snapshot():
    return sorted((os.path.relpath(os.path.join(d, f), workdir), os.stat(os.path.join(d, f)).st_mtime_ns)
                  for d, _, files in os.walk(workdir) for f in files)

  before = snapshot()
  model, variables, loaded = eiw_jax.load_run(workdir)
  assert snapshot() == before
  assert loaded.model.to_dict() == json.load(open(os.path.join(workdir, 'config.json')))['model']
  images = jax.random.randint(jax.random.key(0), (2, 8, 8, 1), 0, 256)
  assert np.all(np.isfinite(eiw_jax.log_prob(model, variables, images)))
  with pytest.raises(eiw_jax.UserError, match='no config given and none saved'):
    eiw_jax.load_run(str(tmp_path / 'missing'))


# 4. The Shuffle, looked into.

def test_shuffle_info_reports_q_the_permutation_p_and_the_kl(tiny):
  model, variables, images, _ = tiny
  key = jax.random.key(5)
  (info,) = eiw_jax.shuffle_info(model, variables, images, key)
  q, perm, p = np.asarray(info['q']), np.asarray(info['perm']), np.asarray(info['p'])
  assert q.shape == perm.shape == (16,) and p.shape == (4, 16)
  np.testing.assert_allclose(q.sum(), 1, rtol=1e-6)
  np.testing.assert_allclose(p.sum(-1), 1, rtol=1e-5)
  # refresh every step: the 8 largest Q go on, each half in its order in u_k
  ranked = np.argsort(-q, kind='stable')
  np.testing.assert_array_equal(perm, np.concatenate([np.sort(ranked[:8]), np.sort(ranked[8:])]))
  assert not np.array_equal(perm, np.arange(16))
  np.testing.assert_array_equal(np.nonzero(info['factored'])[0], np.sort(perm[8:]))
  # The KL is the one the objective charges: KL(P || Q) averaged over the batch.
  by_hand = np.mean(np.sum(p * (np.log(p) - np.log(q)), -1))
  np.testing.assert_allclose(float(info['kl']), by_hand, rtol=1e-4)
  _, metrics = eiw_jax.loss(model, variables, images, key)
  np.testing.assert_allclose(float(metrics['kl']), float(info['kl']), rtol=1e-5)
  assert set(eiw_jax.shuffle_info(model, variables)[0]) == {
      'perm', 'factored', 'q', 'scores', 'live_perm', 'stale'}


# 5. Forward-mode autodiff through the whole flow.

def test_jacfwd_through_the_flow_equals_jacrev(tiny):
  model, variables, images, _ = tiny
  y = eiw_jax.to_continuous(images[:1], 8)
  flat = lambda t: eiw_jax.flatten_latents(eiw_jax.encode(model, variables, t.reshape(y.shape)))
  fwd = jax.jacfwd(flat)(y.reshape(-1))
  rev = jax.jacrev(flat)(y.reshape(-1))
  np.testing.assert_allclose(fwd, rev, rtol=1e-4, atol=1e-5)
  # and its log|det| is the flow's logdet; with the N(0, I) of the latents, the
  # continuous density (split_prior='standard')
  _, logdet = eiw_jax.forward(model, variables, y)
  slogdet = np.linalg.slogdet(np.asarray(fwd, np.float64))[1]
  np.testing.assert_allclose(slogdet, float(logdet[0]), rtol=1e-4, atol=1e-3)
  z = np.asarray(flat(y.reshape(-1)), np.float64)
  np.testing.assert_allclose(float(eiw_jax.log_prob_continuous(model, variables, y)[0]),
                             slogdet - 0.5 * np.sum(z**2 + np.log(2 * np.pi)), rtol=1e-4, atol=1e-3)


def test_jvp_and_hessian_of_the_loss_in_the_parameters(tiny):
  model, variables, images, _ = tiny
  key = jax.random.key(2)
  out = lambda p: eiw_jax.loss(model, {**variables, 'params': p}, images, key)[0]
  params = variables['params']
  tangent = jax.tree.map(lambda x: jnp.ones_like(x) * 1e-2, params)
  _, forward_mode = jax.jvp(out, (params,), (tangent,))
  grads = jax.grad(out)(params)
  by_grad = sum(jnp.vdot(g, t) for g, t in zip(jax.tree.leaves(grads), jax.tree.leaves(tangent)))
  np.testing.assert_allclose(float(forward_mode), float(by_grad), rtol=1e-3)
  # Second order: forward-over-reverse (jax.hessian) equals reverse-over-reverse.
  path = ('flow', 'scale_1', 'steps', 'steps', 'step', 'Coupling_0', 'out', 'bias')

  def of_bias(bias):
    p = jax.tree.map(lambda x: x, params)
    node = p
    for name in path[:-1]:
      node = node[name]
    node[path[-1]] = bias
    return out(p)

  bias = functools.reduce(lambda node, name: node[name], path, params) + 0.1
  np.testing.assert_allclose(jax.hessian(of_bias)(bias), jax.jacrev(jax.grad(of_bias))(bias),
                             rtol=1e-3, atol=1e-4)


# 6. Dequantisation noise per image.

def test_an_images_log_prob_does_not_depend_on_its_batch(tiny):
  model, variables, images, log_prob = tiny
  key = jax.random.key(9)
  full = np.asarray(log_prob(variables, images, key))
  np.testing.assert_array_equal(np.asarray(log_prob(variables, images[:2], key)), full[:2])
  np.testing.assert_array_equal(
      np.asarray(log_prob(variables, jnp.concatenate([images, images]), key))[:4], full)


def test_train_loss_is_the_loss_and_hands_back_the_consts(tiny):
  model, variables, images, _ = tiny  # no BatchNorm, no refreshed order: consts as they were
  key = jax.random.key(4)
  value, metrics = eiw_jax.loss(model, variables, images, key)
  value_b, metrics_b, consts = eiw_jax.train_loss(model, variables, images, key)
  np.testing.assert_array_equal(value, value_b)
  assert metrics.keys() == metrics_b.keys()
  chex.assert_trees_all_equal(consts, variables['consts'])


# 8. Shapes, keys, return values and docstrings agree with one another.

def test_latent_shapes_feed_unflatten_latents(tiny):
  model, variables, images, _ = tiny
  y = eiw_jax.to_continuous(images, 8)
  latents = eiw_jax.encode(model, variables, y)
  shapes = eiw_jax.latent_shapes(model, variables, 4)
  assert shapes == [z.shape for z in latents]
  back = eiw_jax.unflatten_latents(eiw_jax.flatten_latents(latents), shapes)
  for a, b in zip(back, latents):
    np.testing.assert_array_equal(a, b)


def test_rng_none_means_a_fixed_key_everywhere(tiny):
  model, variables, images, _ = tiny
  np.testing.assert_array_equal(eiw_jax.log_prob(model, variables, images),
                                eiw_jax.log_prob(model, variables, images, jax.random.key(0)))


def test_forward_and_inverse_follow_the_bijector_contract(tiny):
  model, variables, images, _ = tiny
  y = eiw_jax.to_continuous(images, 8)
  latents, logdet = eiw_jax.forward(model, variables, y)
  y_back, inverse_logdet = eiw_jax.inverse(model, variables, latents)
  assert logdet.shape == (4,) and float(jnp.max(jnp.abs(y_back - y))) < 1e-5
  np.testing.assert_allclose(logdet, -inverse_logdet, rtol=1e-5, atol=1e-4)
  with pytest.raises(eiw_jax.UserError, match='list of 2 per-scale latents'):
    eiw_jax.inverse(model, variables, latents[:1])


def test_every_bijector_has_its_own_docstring():
  classes = [getattr(eiw_jax.bijectors, name) for name in eiw_jax.bijectors.__all__]
  classes = [c for c in classes if inspect.isclass(c)]
  assert len(classes) >= 7
  missing = [c.__name__ for c in classes if not (c.__dict__.get('__doc__') or '').strip()]
  assert not missing, f'bijectors without a docstring: {missing}'


# Issue 30, the API as a building block: each item through public names.

def _perturbed(variables, scale=0.1, seed=11, only=''):
  """Every float parameter (whose path holds `only`) moved off its init, so no layer
  is the identity. Drawn by numpy: an eager jax.random call per shape would compile."""
  noise = np.random.default_rng(seed)
  return {**variables, 'params': jax.tree_util.tree_map_with_path(
      lambda path, x: x + scale * noise.standard_normal(x.shape).astype(x.dtype)
      if only in jax.tree_util.keystr(path) else x, variables['params'])}


@pytest.fixture(scope='module')
def trained():
  """Four updates of a model whose order is refreshed every 2 steps (with Glow's
  conditional split prior and a learned base), by train.py's step (the reference)
  and by a plain optax loop written with public names only."""
  import optax  # pylint: disable=g-import-not-at-top
  from eiw_jax.train import optimizer as optimizer_lib, state as state_lib, step as step_lib  # pylint: disable=g-import-not-at-top
  config = tiny_config(shuffle_refresh_every=2, split_prior='conditional', learned_base=True)
  model = eiw_jax.build(config)
  batches = [jax.random.randint(jax.random.key(20 + i), (4, *SHAPE), 0, 256).astype(jnp.uint8)
             for i in range(4)]
  key = jax.random.key(7)
  reference = optimizer_lib.make_optimizer(ml_collections.ConfigDict(optimizer_lib.defaults()))
  state = state_lib.init_state(model, reference, False, key, batches[0])
  train_step = jax.jit(functools.partial(step_lib.train_step, model, reference, 0.0))
  for batch in batches:
    state, _ = train_step(state, batch)

  # The custom loop: train.py's per-step key is fold_in(key, step) of the key that
  # init_state keeps, the second half of split(key).
  init_key, loop_key = jax.random.split(key)
  variables = eiw_jax.init(model, init_key, batches[0])
  opt = eiw_jax.optimizer(config)
  opt_state = opt.init(variables['params'])

  @jax.jit
  def update(variables, opt_state, images, key):
    def loss_fn(params):
      loss, _, consts = eiw_jax.train_loss(model, {**variables, 'params': params}, images, key)
      return loss, consts
    (_, consts), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables['params'])
    updates, opt_state = opt.update(grads, opt_state, variables['params'])
    return {'params': optax.apply_updates(variables['params'], updates), 'consts': consts}, opt_state

  perms = [np.asarray(eiw_jax.shuffle_info(model, variables)[0]['perm'])]
  for i, batch in enumerate(batches):
    variables, opt_state = update(variables, opt_state, batch, jax.random.fold_in(loop_key, i))
    perms.append(np.asarray(eiw_jax.shuffle_info(model, variables)[0]['perm']))
  return model, variables, state, perms, batches


def test_a_plain_optax_loop_trains_the_shuffle_as_train_py_does(trained):
  model, variables, state, perms, _ = trained
  chex.assert_trees_all_close(variables['params'], state.params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_equal(variables['consts'], state.consts)
  used = eiw_jax.shuffle_info(model, state.variables())[0]['perm']
  np.testing.assert_array_equal(perms[-1], used)
  # The order is refreshed by the training applies 0 and 2 (refresh_every=2): the
  # first takes the equal scores of init (the identity), the third the scores after
  # two updates, which the solver's SGD has moved.
  for before in perms[:3]:
    np.testing.assert_array_equal(before, np.arange(16))
  np.testing.assert_array_equal(perms[3], perms[4])
  assert not np.array_equal(perms[4], np.arange(16)), perms
  assert int(variables['consts']['flow']['shuffle_0']['updates']) == 4


def test_the_optimiser_recipe_refuses_unknown_keys_and_bad_rates():
  with pytest.raises(eiw_jax.UserError, match="unknown optim key 'optim.shufle_lr'; did you mean "
                     'optim.shuffle_lr'):
    eiw_jax.optimizer(shufle_lr=1.0)
  with pytest.raises(eiw_jax.UserError, match='optim.lr must be > 0.*set config.optim.lr'):
    eiw_jax.optimizer(tiny_config(), lr=-1.0)
  bpd = tiny_config(kl_units='bpd', kl_weight=1.0)
  with pytest.raises(eiw_jax.UserError, match='overshoots.*config.optim.shuffle_lr below'):
    eiw_jax.optimizer(bpd)


def test_config_typos_in_build_and_validate_are_refused():
  config = tiny_config()
  config.model.hiden = 8
  for fn in (eiw_jax.build, eiw_jax.validate):
    with pytest.raises(eiw_jax.UserError, match="unknown key 'model.hiden'; did you mean model.hidden"):
      fn(config)
  denseflow = ml_collections.ConfigDict(dict(model=eiw_jax.model_config(backbone='denseflow'),
                                             data=dict(image_size=8, channels=1, num_bits=8)))
  eiw_jax.validate(denseflow)  # the backbone's defaults are complete
  denseflow.model.denseflow.net.hiden = 3
  with pytest.raises(eiw_jax.UserError, match="'model.denseflow.net.hiden'; did you mean "
                     'model.denseflow.net.hidden'):
    eiw_jax.validate(denseflow)
  ffjord = tiny_config(backbone='ffjord')
  assert ffjord.model.ffjord.blocks >= 1
  eiw_jax.validate(ffjord)
  config = tiny_config()
  config.model.num_scales = 0
  with pytest.raises(eiw_jax.UserError) as e:  # API terms, not command-line flags
    eiw_jax.validate(config)
  assert 'set config.model.num_scales=2' in str(e.value) and '--' not in str(e.value)


# Checks that hold under jit (the checked mode) and ranges outside it.

def test_the_checked_mode_enforces_values_inside_jit(tiny):
  model, variables, images, log_prob = tiny
  key = jax.random.key(3)
  program = eiw_jax.checked(lambda v, x, k, t: (eiw_jax.log_prob(model, v, x, k),
                                                eiw_jax.sample(model, v, k, 2, t)))
  lp, samples = program(variables, images, key, 0.5)
  np.testing.assert_allclose(lp, log_prob(variables, images, key), rtol=1e-6)
  assert samples.dtype == jnp.uint8 and samples.shape == (2, *SHAPE)  # like the images
  log_prob(variables, images + 256, key)  # a plain jit cannot read values: no error
  with pytest.raises(eiw_jax.UserError, match=r'log_prob: image values must lie in \[0, 256\) '
                     r'for this 8-bit model; got values in \[\d+, \d+\]'):
    program(variables, images + 256, key, 0.5)
  with pytest.raises(eiw_jax.UserError, match='sample: temperature must be >= 0.*got -1'):
    program(variables, images, key, -1.0)


def test_continuous_inputs_and_latents_are_range_checked_outside_jit(tiny):
  model, variables, images, _ = tiny
  raw = images.astype(jnp.float32)  # 0..255, not to_continuous
  for fn in (eiw_jax.forward, eiw_jax.encode):
    with pytest.raises(eiw_jax.UserError, match=r'continuous y must lie in \[-0.5, 0.5\].*got '
                       r'values in \[\d+\.0, 2\d\d\.0\].*to_continuous'):
      fn(model, variables, raw)
  with pytest.raises(eiw_jax.UserError, match='latents must be finite; got values in .*inf'):
    eiw_jax.decode(model, variables, [jnp.full((1, 2, 2, 8), jnp.inf), jnp.zeros((1, 2, 2, 8))])
  with pytest.raises(eiw_jax.UserError, match='continuous y must be finite'):
    eiw_jax.log_prob_continuous(model, variables, raw.at[0, 0, 0, 0].set(jnp.nan))


# A continuous density, right for every split prior.

@pytest.fixture(scope='module')
def conditional(trained):
  """The trained model (Glow's conditional split prior, a learned base) with every
  parameter moved off its init (the priors start as the identity), and continuous y."""
  model, variables = trained[:2]
  y = jnp.asarray(np.random.default_rng(4).uniform(-0.5, 0.5, (4, *SHAPE)), jnp.float32)
  return model, _perturbed(variables), y


def test_log_prob_continuous_is_the_change_of_variables(conditional):
  # split_prior='standard': test_jacfwd_through_the_flow_equals_jacrev.
  model, variables, y = conditional
  y = y[:1]
  flat = lambda t: eiw_jax.flatten_latents(eiw_jax.encode(model, variables,
                                                          t.reshape(y.shape)))[0]
  jacobian = np.asarray(jax.jit(jax.jacfwd(flat))(y.reshape(-1)), np.float64)
  z = np.asarray(flat(y.reshape(-1)), np.float64)
  by_hand = np.linalg.slogdet(jacobian)[1] - 0.5 * np.sum(z**2 + np.log(2 * np.pi))
  np.testing.assert_allclose(float(eiw_jax.log_prob_continuous(model, variables, y)[0]), by_hand,
                             rtol=1e-4, atol=1e-3)


def test_init_takes_continuous_inputs(conditional):
  model, variables, y = conditional
  from_y = jax.eval_shape(lambda y: eiw_jax.init(model, jax.random.key(0), y), y)  # traced only
  chex.assert_trees_all_equal_shapes_and_dtypes(from_y, variables)


# The distribution-style face.

def test_the_distribution_face_follows_distrax_conventions(conditional):
  model, variables, y = conditional
  dist = eiw_jax.Distribution(model, variables)
  assert dist.event_shape == SHAPE and dist.batch_shape == ()

  @jax.jit  # one program; the face is a pytree (the model a static field), an argument
  def run(dist, y, key):
    samples, sample_log_prob = dist.sample_and_log_prob(seed=key, sample_shape=(2, 2))
    z, inverse_logdet = dist.bijector.inverse_and_log_det(y)  # data -> latent
    y_back, forward_logdet = dist.bijector.forward_and_log_det(z)  # latent -> data
    return dict(batched=dist.log_prob(y), grid=dist.log_prob(y.reshape(2, 2, *SHAPE)),
                unbatched=dist.log_prob(y[0]), samples=samples, sample_log_prob=sample_log_prob,
                of_samples=dist.log_prob(samples), z=z, y_back=y_back,
                inverse_logdet=inverse_logdet, forward_logdet=forward_logdet)

  out = run(dist, y, jax.random.key(6))
  np.testing.assert_allclose(out['batched'], eiw_jax.log_prob_continuous(model, variables, y),
                             rtol=1e-5)
  np.testing.assert_allclose(out['grid'], out['batched'].reshape(2, 2), rtol=1e-6)
  assert out['unbatched'].shape == () and np.isclose(out['unbatched'], out['batched'][0], rtol=1e-5)
  assert out['samples'].shape == (2, 2, *SHAPE) and out['sample_log_prob'].shape == (2, 2)
  np.testing.assert_allclose(out['sample_log_prob'], out['of_samples'], rtol=1e-4, atol=1e-3)
  assert jax.eval_shape(lambda: dist.sample(seed=6, sample_shape=3)).shape == (3, *SHAPE)
  assert out['z'].shape == (4, dist.bijector.latent_size) == (4, 64)
  np.testing.assert_allclose(out['y_back'], y, atol=1e-5)
  np.testing.assert_allclose(out['forward_logdet'], -out['inverse_logdet'], rtol=1e-5, atol=1e-4)
  with pytest.raises(eiw_jax.UserError, match=r'shape \[\.\.\., 8, 8, 1\].*got \(8, 8, 3\)'):
    dist.log_prob(jnp.zeros((8, 8, 3)))


# init compiled once per shape.

def test_init_compiles_once_per_shape(tiny):
  model, _, images, _ = tiny
  compiles = []
  listening = [True]

  def count(event, duration, **unused):
    if listening[0] and event.endswith('backend_compile_duration'):
      compiles.append(duration)

  jax.monitoring.register_event_duration_secs_listener(count)
  try:
    again = eiw_jax.init(model, jax.random.key(1), images)  # the fixture's call compiled it
  finally:
    listening[0] = False
  assert compiles == [], compiles
  assert set(again) == {'params', 'consts'}


# Errors that name the problem and the fix in the API's terms.

@pytest.mark.parametrize('case, match', [
    ('list', r'log_prob: integer images must be an array \(jax or numpy\); got a list. Pass '
             r'jnp.asarray'),
    ('int_rng', r'log_prob: rng must be one JAX random key, e.g. jax.random.key\(0\).*got int 0'),
    ('no_consts', r"log_prob: the variables lack the 'consts' collection.*\{\*\*variables, "
                  r"'params': params\}"),
    ('bare_params', r"log_prob: variables must be the dict .*looks like variables\['params'\] "
                    r'alone'),
    ('latent_shapes', r'decode: latents must have shapes \[B, 2, 2, 8\], \[B, 2, 2, 8\] with one '
                      r'batch size B \(latent_shapes gives them\); got \[\(4, 2, 2, 8\), '
                      r'\(4, 2, 2, 7\)\]'),
])
def test_raw_errors_are_one_line_with_the_fix(tiny, case, match):
  model, variables, images, _ = tiny
  call = {
      'list': lambda: eiw_jax.log_prob(model, variables, np.asarray(images).tolist()),
      'int_rng': lambda: eiw_jax.log_prob(model, variables, images, 0),
      'no_consts': lambda: eiw_jax.log_prob(model, {'params': variables['params']}, images),
      'bare_params': lambda: eiw_jax.log_prob(model, variables['params'], images),
      'latent_shapes': lambda: eiw_jax.decode(
          model, variables, [jnp.zeros((4, 2, 2, 8)), jnp.zeros((4, 2, 2, 7))]),
  }[case]
  with pytest.raises(eiw_jax.UserError, match=match) as e:
    call()
  assert '\n' not in str(e.value) and '--config' not in str(e.value)


def test_loss_takes_rng_none_as_log_prob_does(tiny):
  model, variables, images, _ = tiny
  np.testing.assert_array_equal(eiw_jax.loss(model, variables, images)[0],
                                eiw_jax.loss(model, variables, images, jax.random.key(0))[0])


# shuffle_info: the statistic behind the ranking, and a stale permutation.

def test_shuffle_info_flags_a_stale_permutation(trained):
  model, variables, _, _, batches = trained
  # After 4 updates the order was last refreshed before update 2; the live Q moved since.
  moved = _perturbed(variables, scale=1.0, seed=3, only='solver')
  info = eiw_jax.shuffle_info(model, moved)[0]
  assert bool(info['stale']) and not np.array_equal(info['perm'], info['live_perm'])
  ranked = np.argsort(-np.asarray(info['q']), kind='stable')  # the live Q's split
  np.testing.assert_array_equal(info['live_perm'], np.concatenate([np.sort(ranked[:8]),
                                                                  np.sort(ranked[8:])]))
  # A training apply at a refresh step (update 4, refresh_every=2) brings the order up to date.
  _, _, consts = eiw_jax.train_loss(model, moved, batches[0])
  fresh = eiw_jax.shuffle_info(model, {**moved, 'consts': consts})[0]
  assert not bool(fresh['stale'])
  np.testing.assert_array_equal(fresh['perm'], info['live_perm'])
  np.testing.assert_allclose(jax.nn.softmax(fresh['scores']), info['q'], rtol=1e-5)


def test_shuffle_info_returns_the_statistic_of_the_channels_it_ranks(tiny):
  model, variables, images, _ = tiny
  info = eiw_jax.shuffle_info(model, variables, images, jax.random.key(5))[0]
  # z_1 is the factored half of û = u[..., perm] (split_prior='standard'), so the
  # statistic of u's channels perm[8:] is the statistic of z_1. Recomputed here from
  # encode's z_1 on the bins' centres (shuffle_info dequantises: a 1/256 difference).
  z1 = np.asarray(eiw_jax.encode(model, variables, eiw_jax.to_continuous(images, 8))[0],
                  np.float64)
  mean, var = z1.mean(0), z1.var(0)
  moments = 0.5 * (var + mean**2 - 1 - np.log(var))
  g = np.exp(-0.5 * ((z1 - mean) / np.sqrt(var))**2)
  k1, k2 = 36 / (8 * np.sqrt(3) - 9), 24 / (16 * np.sqrt(3) - 27)  # Hyvarinen (1998)
  negentropy = (k1 * np.mean((z1 - mean) / np.sqrt(var) * g, 0)**2
                + k2 * (np.mean(g, 0) - np.sqrt(0.5))**2)
  by_hand = np.mean(moments + negentropy, axis=(0, 1))
  np.testing.assert_allclose(np.asarray(info['statistic'])[np.asarray(info['perm'])[8:]], by_hand,
                             rtol=0.02, atol=0.005)


def test_the_squeeze_puts_map_c_at_sub_position_dy_dx_in_channel_4c_2dy_dx():
  h = np.zeros((1, 4, 6, 3))  # [B, H, W, C]; entry = 100 c + 10 dy + dx at (2i + dy, 2j + dx)
  for c in range(3):
    for dy in range(2):
      for dx in range(2):
        h[0, dy::2, dx::2, c] = 100 * c + 10 * dy + dx
  u = np.asarray(eiw_jax.bijectors.squeeze(jnp.asarray(h)))  # [1, 2, 3, 12]
  for channel in range(12):
    c, (dy, dx) = channel // 4, divmod(channel % 4, 2)
    assert np.all(u[..., channel] == 100 * c + 10 * dy + dx), channel


# Smaller: a constant batch at init is warned about (uint8 samples: the checked mode test).

def test_init_on_a_constant_batch_warns(tiny):
  model, _, images, _ = tiny
  with pytest.warns(UserWarning, match='a channel of the batch is constant'):
    eiw_jax.init(model, jax.random.key(1), jnp.zeros_like(images))


# Types and the reference.

def test_the_package_is_typed_and_versioned():
  root = os.path.join(os.path.dirname(__file__), '..')
  assert os.path.exists(os.path.join(os.path.dirname(eiw_jax.__file__), 'py.typed'))
  pyproject = open(os.path.join(root, 'pyproject.toml')).read()
  assert 'eiw_jax = ["py.typed"]' in pyproject
  assert 'version = {attr = "eiw_jax.__version__"}' in pyproject
  assert re.fullmatch(r'\d+\.\d+\.\d+', eiw_jax.__version__)
  for name in eiw_jax.__all__:
    fn = getattr(eiw_jax, name)
    if inspect.isfunction(fn):
      signature = inspect.signature(fn)
      untyped = [p for p in signature.parameters.values() if p.annotation is inspect.Parameter.empty]
      assert not untyped and signature.return_annotation is not inspect.Signature.empty, name


def test_every_public_name_is_in_the_api_reference():
  with open(os.path.join(os.path.dirname(__file__), '..', 'docs', 'API.md')) as f:
    headings = [line for line in f if line.startswith('#### `')]
  for name in eiw_jax.__all__:
    entry = [h for h in headings if h.startswith((f'#### `{name}`', f'#### `{name}('))]
    assert entry, f'docs/API.md has no "#### `{name}..." entry'
    fn = getattr(eiw_jax, name)
    if inspect.isfunction(fn):  # the entry's signature is the function's
      assert entry[0].strip() == f'#### `{name}({_signature(fn)})`', (entry[0], _signature(fn))


def _signature(fn) -> str:
  """A signature as the reference writes it: names and defaults, no annotations."""
  out = []
  for p in inspect.signature(fn).parameters.values():
    star = {p.VAR_POSITIONAL: '*', p.VAR_KEYWORD: '**'}.get(p.kind, '')
    out.append(star + p.name + ('' if p.default is p.empty else f'={p.default!r}'))
  return ', '.join(out)
