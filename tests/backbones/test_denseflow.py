"""Tests for the DenseFlow backbone (eiw_jax.backbones.densenet, eiw_jax.backbones.denseflow).

Every bijector gets the distrax battery with random non-identity parameters:
round trip, forward logdet = -inverse logdet, logdet against
slogdet(jax.jacfwd) on <= 64 dims (forward mode, which every layer supports). Parameter counts of the full-size
DenseFlow-74-10 pieces are derived with `jax.eval_shape` (nothing allocated)
and compared with counts written out by hand from DenseFlow's code.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eiw_jax.backbones.densenet import DenseCouplingNet, NetSettings, NystromAttention, newton_pinv
from eiw_jax.nets import conv_same
from eiw_jax.backbones.denseflow import (CrossUnitCoupling, DenseFlowModule, DenseFlowScale,
                                         denseflow_74_10)
from eiw_jax.backbones.denseflow_dequant import DenseFlowDequantizer

TINY_NET = NetSettings(hidden=8, dense_growth=4, depth=2, embed=4, num_landmarks=4,
                       newton_iters=6)
PAPER_NET = NetSettings(**denseflow_74_10()['net'])
TINY_DEQUANT = dict(num_steps=2, hidden=8, depth=1, growth=4, context_channels=4,
                    context_depth=1, context_growth=4)


def key(seed):
  # XLA:CPU compiles every threefry call site in seconds; 'rbg' keys compile
  # in milliseconds, and these tests only need some randomness.
  return jax.random.key(seed, impl='rbg')


def rngs(seed):
  return {'params': key(seed), 'noise': key(seed + 1), 'dequant': key(seed + 2)}


def normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def perturb(variables, seed, scale=0.1):
  """Adds small noise to every parameter (zero-initialised output layers included)."""
  leaves, treedef = jax.tree.flatten(variables['params'])
  leaves = [p + scale * normal(seed + i, p.shape) for i, p in enumerate(leaves)]
  return {**variables, 'params': jax.tree.unflatten(treedef, leaves)}


def data(seed, shape):
  return 0.5 + 2.0 * normal(seed, shape)


def jitted(layer):
  """Jitted (init, forward, inverse) for a bijector: one compile each per shape."""
  init = jax.jit(layer.init)
  fwd = jax.jit(lambda v, x, **kw: layer.apply(v, x, method='forward', **kw))
  inv = jax.jit(lambda v, y, **kw: layer.apply(v, y, method='inverse', **kw))
  return init, fwd, inv


def num_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def param_count(module, *args, **kwargs):
  shapes = jax.eval_shape(lambda: module.init(rngs(0), *args, **kwargs))
  return num_params(shapes['params'])


def check_logdet(jac, logdet):
  _, expected = jnp.linalg.slogdet(jac)
  np.testing.assert_allclose(logdet, expected, rtol=1e-4, atol=2e-3)


# ----- the coupling network ----------------------------------------------------

@pytest.mark.parametrize('k', [1, 3])
def test_conv_same_vjp_matches_autodiff(k):
  x, w = normal(20, (2, 5, 5, 3)), normal(21, (k, k, 3, 4))
  ref = lambda x, w: jnp.sum(jnp.sin(jax.lax.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))))
  got = lambda x, w: jnp.sum(jnp.sin(conv_same(x, w)))
  np.testing.assert_allclose(got(x, w), ref(x, w), rtol=1e-6)
  for a, b in zip(jax.grad(got, (0, 1))(x, w), jax.grad(ref, (0, 1))(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_newton_pinv_inverts_a_softmax_matrix():
  k = jax.nn.softmax(normal(0, (3, 4, 4)), axis=-2)
  k = 0.5 * k + 0.5 * jnp.eye(4) / 1.0            # column-stochastic-ish, well conditioned
  np.testing.assert_allclose(newton_pinv(k, 6), jnp.linalg.inv(k), atol=1e-4)


def test_coupling_net_param_count_matches_denseflow():
  # DenseFlow's DenseNetMultihead(in=6, mid=48, depth=7, growth=64), less the
  # zero-init output conv (owned by Coupling). w_i = 48 + 64 i.
  dense = sum((48 + 64 * i) ** 2 + (48 + 64 * i) + 9 * (48 + 64 * i) * 64 + 64
              for i in range(7))
  expected = (6 * 48 + 48                          # input 1x1 conv
              + dense
              + (48 + 7 * 64) * 3 * 48 + 3 * 48    # gated 1x1 conv
              + 48 * 72 + 72 + 24 * 48 + 48        # attention qkv + out
              + 2 * 96                             # normalisation scale, bias
              + 96 * 48)                           # mix conv, no bias
  net = DenseCouplingNet(net=PAPER_NET)
  assert param_count(net, jnp.zeros((1, 16, 16, 6))) == expected == 1_569_128


def _nystrom_numpy(x, p, embed, landmarks, iters, channel_major):
  """Nystrom attention in float64 numpy, index by index. channel_major: DenseFlow's
  token i holds flat positions 3E*i .. 3E*(i+1)-1 of the [3E, H, W] qkv array (read
  as c*H*W + r*W + s), and its output is written back to [E, H, W] the same way."""
  b, h, w, _ = x.shape
  n, e = h * w, embed
  qkv = x @ p['qkv']['kernel'][0, 0] + p['qkv']['bias']            # [B, H, W, 3E]
  tokens = np.zeros((b, n, 3 * e))
  for bi in range(b):
    for i in range(n):
      for f in range(3 * e):
        if channel_major:
          c, pos = divmod(3 * e * i + f, n)
          tokens[bi, i, f] = qkv[bi, pos // w, pos % w, c]
        else:
          tokens[bi, i, f] = qkv[bi, i // w, i % w, f]
  q, k, v = tokens[..., :e], tokens[..., e:2 * e], tokens[..., 2 * e:]
  seg = lambda t: t.reshape(b, landmarks, n // landmarks, e).mean(axis=2) / math.sqrt(n)
  softmax = lambda a: np.exp(a - a.max(-2, keepdims=True)) / np.exp(
      a - a.max(-2, keepdims=True)).sum(-2, keepdims=True)
  k1 = softmax(q @ seg(k).transpose(0, 2, 1))
  k2 = softmax(seg(q) @ seg(k).transpose(0, 2, 1))
  k3 = softmax(seg(q) @ k.transpose(0, 2, 1))
  inv = []
  for m in k2:   # the Newton iteration for the pseudo-inverse, as Nystromformer's Eq. 16
    eye = np.eye(len(m))
    z = m.T / (np.abs(m).sum(0).max() * np.abs(m).sum(1).max())
    for _ in range(iters):
      km = m @ z
      z = 0.25 * z @ (13 * eye - km @ (15 * eye - km @ (7 * eye - km)))
    inv.append(z)
  out = k1 @ np.stack(inv) @ (k3 @ v) + v                          # [B, N, E]
  image = np.zeros((b, h, w, e))
  for bi in range(b):
    for i in range(n):
      for f in range(e):
        if channel_major:
          c, pos = divmod(e * i + f, n)
          image[bi, pos // w, pos % w, c] = out[bi, i, f]
        else:
          image[bi, i // w, i % w, f] = out[bi, i, f]
  return image @ p['out']['kernel'][0, 0] + p['out']['bias']


def test_attention_tokens_are_pixels_or_denseflows_nchw_reshape():
  """tokens='nchw_reshape' computes DenseFlow's attention (its code reshapes NCHW to
  tokens without a transpose); 'pixels', the default, attends over pixels; they differ."""
  x = normal(30, (2, 4, 4, 6))
  outs = {}
  for tokens in ('pixels', 'nchw_reshape'):
    layer = NystromAttention(embed=3, num_landmarks=4, newton_iters=6, tokens=tokens)
    params = perturb(layer.init(key(31), x), 32, scale=0.3)['params']
    outs[tokens] = layer.apply({'params': params}, x)
    expected = _nystrom_numpy(np.asarray(x, np.float64),
                              jax.tree.map(lambda a: np.asarray(a, np.float64), params),
                              3, 4, 6, tokens == 'nchw_reshape')
    np.testing.assert_allclose(outs[tokens], expected, rtol=1e-4, atol=1e-5)
  assert np.max(np.abs(outs['pixels'] - outs['nchw_reshape'])) > 1e-2
  with pytest.raises(ValueError, match='tokens must be one of'):
    NystromAttention(tokens='rows').init(key(0), x)


# ----- one module ----------------------------------------------------------------

@pytest.fixture(scope='module')
def module_setup():
  init, fwd, inv = jitted(DenseFlowModule(net=TINY_NET))
  x = data(2, (2, 4, 4, 4))
  v = perturb(init(rngs(2), x), 3)
  return fwd, inv, v, x


def test_module_round_trip_and_logdet_symmetry(module_setup):
  fwd, inv, v, x = module_setup
  y, ld = fwd(v, x)
  x2, ld_inv = inv(v, y)
  assert ld.shape == (2,) and ld.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(y - x))) > 1e-2      # not the identity
  assert float(jnp.max(jnp.abs(x2 - x))) <= 1e-5
  np.testing.assert_allclose(ld, -ld_inv, rtol=1e-6, atol=1e-5)


def test_module_logdet_matches_jacobian(module_setup):
  fwd, _, v, x = module_setup
  x1 = x[:1]                                          # 64 dims
  f = lambda z: fwd(v, z.reshape(x1.shape))[0].ravel()
  jac = jax.jit(jax.jacfwd(f))(x1.ravel())
  check_logdet(jac, fwd(v, x1)[1][0])


def test_module_param_count_matches_denseflow():
  c, ca, cb = 22, 11, 11
  net = (ca * 48 + 48 + sum((48 + 64 * i) ** 2 + (48 + 64 * i) + 9 * (48 + 64 * i) * 64 + 64
                            for i in range(7))
         + (48 + 7 * 64) * 3 * 48 + 3 * 48 + 48 * 72 + 72 + 24 * 48 + 48 + 2 * 96 + 96 * 48)
  expected = 2 * c + c * c + net + 48 * 2 * cb + 2 * cb   # actnorm, 1x1, net, out conv
  layer = DenseFlowModule(net=PAPER_NET)
  assert param_count(layer, jnp.zeros((1, 16, 16, c))) == expected


# ----- cross-unit coupling ---------------------------------------------------------

@pytest.fixture(scope='module')
def cross_setup():
  init, fwd, inv = jitted(CrossUnitCoupling(growth=2))
  x = data(4, (2, 2, 2, 4))
  ctx = data(5, (2, 2, 2, 4))
  v = perturb(init(rngs(4), x, context=ctx), 5, scale=0.3)
  return fwd, inv, v, x, ctx


def test_cross_unit_round_trip_and_logdet_symmetry(cross_setup):
  fwd, inv, v, x, ctx = cross_setup
  y, ld = fwd(v, x, context=ctx, rngs={'noise': key(9)})
  assert y.shape == (2, 2, 2, 6)
  np.testing.assert_array_equal(y[..., :4], x)
  x2, ld_inv = inv(v, y, context=ctx)
  assert float(jnp.max(jnp.abs(x2 - x))) <= 1e-5
  np.testing.assert_allclose(ld, -ld_inv, rtol=1e-6, atol=1e-5)


def test_cross_unit_logdet_matches_jacobian(cross_setup):
  fwd, _, v, x, _ = cross_setup
  x1 = x[:1]                                           # 16 dims, eta 8 dims
  eta = normal(6, (1, 2, 2, 2))

  def square_map(z):                                   # (x, eta) -> y, context = x
    xs, es = z[:16].reshape(x1.shape), z[16:].reshape(eta.shape)
    return fwd(v, xs, context=xs, noise=es)[0].ravel()

  jac = jax.jit(jax.jacfwd(square_map))(jnp.concatenate([x1.ravel(), eta.ravel()]))
  _, ld = fwd(v, x1, context=x1, noise=eta)
  log_n = jnp.sum(-0.5 * eta ** 2 - 0.5 * math.log(2 * math.pi))
  check_logdet(jac, ld[0] + log_n)


# ----- one scale -------------------------------------------------------------------

@pytest.fixture(scope='module')
def scale_setup():
  init, fwd, inv = jitted(DenseFlowScale(num_units=2, num_modules=2, growth=2, net=TINY_NET))
  x = data(7, (2, 4, 4, 2))
  init_vars = init(rngs(7), x)
  return fwd, inv, init_vars, perturb(init_vars, 8), x


def test_scale_round_trip_and_logdet_symmetry(scale_setup):
  fwd, inv, _, v, x = scale_setup
  y, ld = fwd(v, x, rngs={'noise': key(10)})
  assert y.shape == (2, 4, 4, 4) and ld.shape == (2,)
  x2, ld_inv = inv(v, y)
  assert float(jnp.max(jnp.abs(x2 - x))) <= 1e-5
  np.testing.assert_allclose(ld, -ld_inv, rtol=1e-5, atol=1e-4)


def test_scale_logdet_matches_jacobian(scale_setup):
  fwd, _, _, v, x = scale_setup
  x1 = x[:1]                                           # 32 dims, eta 32 dims
  eta = normal(11, (1, 4, 4, 2))

  def square_map(z):
    xs, es = z[:32].reshape(x1.shape), z[32:].reshape(eta.shape)
    return fwd(v, xs, noise=[es])[0].ravel()

  jac = jax.jit(jax.jacfwd(square_map))(jnp.concatenate([x1.ravel(), eta.ravel()]))
  _, ld = fwd(v, x1, noise=[eta])
  log_n = jnp.sum(-0.5 * eta ** 2 - 0.5 * math.log(2 * math.pi))
  check_logdet(jac, ld[0] + log_n)


def test_scale_scan_init_is_data_dependent_per_module(scale_setup):
  _, _, init_vars, _, x = scale_setup
  unit0 = init_vars['params']['unit0']['steps']['step']
  loc = unit0['actnorm']['loc']                        # [num_modules, C]
  assert loc.shape == (2, 2)
  np.testing.assert_allclose(loc[0], -jnp.mean(x, axis=(0, 1, 2)), atol=1e-5)
  # Module 1 was initialised from module 0's output, not from x.
  first = {'params': jax.tree.map(lambda a: a[0], unit0)}
  h, _ = jax.jit(DenseFlowModule(net=TINY_NET).apply)(first, x)
  np.testing.assert_allclose(loc[1], -jnp.mean(h, axis=(0, 1, 2)), atol=1e-5)
  assert float(jnp.max(jnp.abs(loc[1] - loc[0]))) > 1e-2
  # The augmented unit sees the appended channels: its ActNorm has C + growth.
  assert init_vars['params']['unit1']['steps']['step']['actnorm']['loc'].shape == (2, 4)


def test_scale_is_per_example(scale_setup):
  fwd, _, _, v, x = scale_setup
  eta = normal(12, (2, 4, 4, 2))
  _, both = fwd(v, x, noise=[eta])
  _, one = fwd(v, x[1:], noise=[eta[1:]])
  np.testing.assert_allclose(both[1:], one, rtol=1e-5, atol=1e-4)


def test_denseflow_74_10_param_counts_match_denseflow():
  cfg = denseflow_74_10()

  def module(c):   # actnorm + 1x1 conv + coupling net + output conv, as above
    ca, cb = c - c // 2, c // 2
    net = (ca * 48 + 48 + sum((48 + 64 * i) ** 2 + (48 + 64 * i) + 9 * (48 + 64 * i) * 64 + 64
                              for i in range(7))
           + (48 + 7 * 64) * 3 * 48 + 3 * 48 + 48 * 72 + 72 + 24 * 48 + 48 + 2 * 96 + 96 * 48)
    return 2 * c + c * c + net + 48 * 2 * cb + 2 * cb

  def cross(cin):  # 3x3 conv cin -> 4 cin, zero-init 1x1 conv 4 cin -> 2 * 10
    return 9 * cin * 4 * cin + 4 * cin + 4 * cin * 20 + 20

  # Cross-unit inputs: concat(x_0, y_0, ..., y_{i-2}); unit j outputs c + 10 j.
  s1 = (5 * sum(module(12 + 10 * i) for i in range(6))
        + cross(12) + cross(12 + 12) + cross(24 + 22) + cross(46 + 32) + cross(78 + 42))
  s2 = (6 * sum(module(124 + 10 * i) for i in range(4))
        + cross(124) + cross(124 + 124) + cross(248 + 134))
  s3 = 20 * module(308)

  def dense_block(cin, cout, depth, growth):  # gated output conv
    return sum((cin + growth * i) ** 2 + (cin + growth * i) + 9 * (cin + growth * i) * growth
               + growth for i in range(depth)) + (cin + depth * growth) * 3 * cout + 3 * cout

  dequant = (dense_block(3, 64, 4, 16) + 64 * 64 * 4 + 64 + dense_block(64, 64, 4, 16)
             + 4 * (12 * 12 + 70 * 64 + 64 + dense_block(64, 64, 4, 64) + 64 * 12 + 12)
             + 12 * 12 + 2 * 12)                       # last 1x1 conv, base loc/scale

  got = []
  for k, (c, hw) in enumerate([(12, 16), (124, 8), (308, 4)]):
    layer = DenseFlowScale(num_units=cfg['units'][k], num_modules=cfg['modules'][k],
                           growth=cfg['growth'], cross_hidden_mult=cfg['cross_hidden_mult'],
                           net=PAPER_NET)
    got.append(param_count(layer, jnp.zeros((1, hw, hw, c))))
  got.append(param_count(DenseFlowDequantizer(**cfg['dequant']),
                         jnp.zeros((1, 32, 32, 3), jnp.int32), 8))
  assert got == [s1, s2, s3, dequant] == [48_061_410, 46_453_404, 33_736_080, 2_395_784]
  # DenseFlow's vanilla total adds the base distribution's loc/log-scale (2 * 308).
  assert sum(got) + 2 * 308 == 130_647_294


# ----- dequantizer -----------------------------------------------------------------

@pytest.fixture(scope='module')
def dequant_setup():
  deq = DenseFlowDequantizer(**TINY_DEQUANT)
  x = jnp.asarray(np.random.default_rng(13).integers(0, 8, (2, 4, 4, 3)), jnp.int32)
  v = perturb(jax.jit(deq.init, static_argnums=2)(rngs(13), x, 3), 14)
  apply = jax.jit(lambda v, x, **kw: deq.apply(v, x, 3, **kw))
  return apply, v, x


def test_dequantizer_output_range_and_randomness(dequant_setup):
  apply, v, x = dequant_setup
  u, log_q = apply(v, x, rngs={'dequant': key(15)})
  u2, _ = apply(v, x, rngs={'dequant': key(16)})
  assert u.shape == x.shape and u.dtype == jnp.float32
  assert log_q.shape == (2,) and log_q.dtype == jnp.float32
  assert bool(jnp.all((u > 0) & (u < 1))) and bool(jnp.all(jnp.isfinite(log_q)))
  assert float(jnp.max(jnp.abs(u - u2))) > 1e-2


def test_dequantizer_log_q_matches_jacobian(dequant_setup):
  apply, v, x = dequant_setup
  x1 = x[:1]
  eps = normal(17, (1, 2, 2, 12))   # 48 dims
  f = lambda e: apply(v, x1, eps=e.reshape(eps.shape))[0].ravel()
  jac = jax.jit(jax.jacfwd(f))(eps.ravel())
  u, log_q = apply(v, x1, eps=eps)
  log_n = jnp.sum(-0.5 * eps ** 2 - 0.5 * math.log(2 * math.pi))
  _, expected = jnp.linalg.slogdet(jac)
  np.testing.assert_allclose(log_q[0], log_n - expected, rtol=1e-4, atol=2e-3)
  # The context matters: another image gives another u for the same eps.
  u_other, _ = apply(v, x[1:], eps=eps)
  assert float(jnp.max(jnp.abs(u_other - u))) > 1e-3


def test_dequantizer_bfloat16_keeps_u_and_log_q_float32(dequant_setup):
  """dtype=bfloat16: the context and coupling nets compute in bfloat16 on the same
  float32 parameters; u and log q stay float32 and close to the float32 values."""
  apply, v, x = dequant_setup
  bf16 = DenseFlowDequantizer(**TINY_DEQUANT, dtype=jnp.bfloat16)
  eps = normal(18, (2, 2, 2, 12))
  jaxpr = str(jax.make_jaxpr(lambda v: bf16.apply(v, x, 3, eps=eps))(v))
  assert 'bf16[2,4,4,8]' in jaxpr  # the context net's features (hidden=8)
  (u32, lq32), (u16, lq16) = apply(v, x, eps=eps), jax.jit(
      lambda v: bf16.apply(v, x, 3, eps=eps))(v)
  assert u16.dtype == lq16.dtype == jnp.float32
  np.testing.assert_allclose(lq16, lq32, rtol=1e-2)
  np.testing.assert_allclose(u16, u32, atol=2e-2)


# ----- DenseFlow's BatchNorm (model.denseflow.norm='batch') ------------------------

def test_batch_norm_matches_numpy_in_training_and_evaluation():
  from eiw_jax.backbones.densenet import BatchNorm  # pylint: disable=g-import-not-at-top
  bn = BatchNorm()
  h = np.random.default_rng(0).normal(2.0, 3.0, (4, 3, 3, 5)).astype(np.float32)
  v = bn.init(key(0), h)
  v = {**v, 'params': {'scale': normal(1, (5,)), 'bias': normal(2, (5,))}}
  scale, bias = np.asarray(v['params']['scale']), np.asarray(v['params']['bias'])
  # Training mode: batch statistics; running averages move 0.1 toward them.
  out, new = jax.jit(lambda v, h: bn.apply(v, h, mutable=['consts']))(v, h)
  mean, var = h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2))
  np.testing.assert_allclose(out, (h - mean) / np.sqrt(var + 1e-5) * scale + bias,
                             rtol=1e-4, atol=1e-4)
  n = 4 * 3 * 3
  np.testing.assert_allclose(new['consts']['mean'], 0.1 * mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new['consts']['var'], 0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)
  # Evaluation mode: the running averages, whatever the batch.
  v2 = {**v, 'consts': new['consts']}
  ev = jax.jit(bn.apply)(v2, h)
  ra_mean, ra_var = np.asarray(new['consts']['mean']), np.asarray(new['consts']['var'])
  np.testing.assert_allclose(ev, (h - ra_mean) / np.sqrt(ra_var + 1e-5) * scale + bias,
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(jax.jit(bn.apply)(v2, h[1:2]), ev[1:2], rtol=1e-6)


def test_coupling_net_batch_norm_keeps_the_param_count():
  x = jnp.zeros((1, 4, 4, 3))
  batch = dataclasses.replace(TINY_NET, norm='batch')
  assert param_count(DenseCouplingNet(net=batch), x) == param_count(DenseCouplingNet(net=TINY_NET), x)


def test_scale_with_batch_norm_trains_on_batch_statistics_and_evaluates_per_example():
  layer = DenseFlowScale(num_units=2, num_modules=2, growth=2,
                         net=dataclasses.replace(TINY_NET, norm='batch'))
  x, eta = data(7, (3, 4, 4, 2)), normal(12, (3, 4, 4, 2))
  v = perturb(jax.jit(layer.init)(rngs(7), x), 8)
  train = jax.jit(lambda v, x, e: layer.apply(v, x, noise=[e], mutable=['consts']))
  evaluate = jax.jit(lambda v, x, e: layer.apply(v, x, noise=[e]))
  inv = jax.jit(lambda v, y: layer.apply(v, y, method='inverse'))
  # Training mode: an example's output depends on the rest of its batch, and the
  # running averages (stacked over the unit's modules) are updated.
  (y_all, _), new = train(v, x, eta)
  (y_one, _), _ = train(v, x[1:], eta[1:])
  assert float(jnp.max(jnp.abs(y_all[1:] - y_one))) > 1e-3
  stats = new['consts']['unit0']['steps']['step']['coupling']['DenseCouplingNet_0']['norm']
  old = v['consts']['unit0']['steps']['step']['coupling']['DenseCouplingNet_0']['norm']
  assert stats['mean'].shape == (2, 16)   # [num_modules, 2 * hidden]
  assert float(jnp.max(jnp.abs(stats['mean'] - old['mean']))) > 1e-4
  # Evaluation mode with the updated averages: per example, and exactly invertible.
  v = {**v, 'consts': new['consts']}
  y, ld = evaluate(v, x, eta)
  y1, ld1 = evaluate(v, x[1:], eta[1:])
  np.testing.assert_allclose(y[1:], y1, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ld[1:], ld1, rtol=1e-5, atol=1e-4)
  x2, ld_inv = inv(v, y)
  assert float(jnp.max(jnp.abs(x2 - x))) <= 1e-4
