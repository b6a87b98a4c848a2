"""The functional API as another JAX project calls it: only the public `eiw_jax`
namespace, one tiny model compiled once per function and reused."""
import functools
import inspect
import json
import os

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
  assert set(eiw_jax.shuffle_info(model, variables)[0]) == {'perm', 'factored', 'q'}


# 5. Forward-mode autodiff through the whole flow.

def test_jacfwd_through_the_flow_equals_jacrev(tiny):
  model, variables, images, _ = tiny
  y = eiw_jax.to_continuous(images[:1], 8)
  flat = lambda t: eiw_jax.flatten_latents(eiw_jax.encode(model, variables, t.reshape(y.shape)))
  fwd = jax.jacfwd(flat)(y.reshape(-1))
  rev = jax.jacrev(flat)(y.reshape(-1))
  np.testing.assert_allclose(fwd, rev, rtol=1e-4, atol=1e-5)
  # and its log|det| is the flow's logdet
  _, logdet = eiw_jax.forward(model, variables, y)
  np.testing.assert_allclose(np.linalg.slogdet(np.asarray(fwd, np.float64))[1], float(logdet[0]),
                             rtol=1e-4, atol=1e-3)


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
