"""Numerics: a trained model round-trips, log-scales stay bounded whatever the
conditioner outputs, and a bfloat16 conditioner keeps every logdet float32 and
every round trip exact."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eiw_jax import api, data
from eiw_jax.bijectors import Coupling
from eiw_jax.builder import build
from eiw_jax.data import sources
from eiw_jax.dequant import VariationalDequantizer
from eiw_jax.model import to_continuous
from eiw_jax.nets import ConvNet
from eiw_jax.train import runs

from helpers import (NUM_STEPS, smoke_config)


def test_trained_model_round_trips(ref):
  model, variables, step = runs.load_for_eval(smoke_config(), ref)
  assert step == NUM_STEPS
  images = data.load_split(smoke_config().data, 'test').images[:8]
  y = to_continuous(jnp.asarray(images, jnp.int32), 8)
  back = jax.jit(lambda v, y: api.decode(model, v, api.encode(model, v, y)))(variables, y)
  assert float(jnp.max(jnp.abs(back - y))) <= 1e-4


def _coupling(dtype=None):
  return Coupling(functools.partial(ConvNet, hidden=8, dtype=dtype))


@pytest.mark.parametrize('sign', [1.0, -1.0])
def test_extreme_conditioner_outputs_keep_log_scale_bounded(sign):
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
  layer = _coupling()
  params = layer.init(jax.random.key(1), x)['params']
  bias = params['out']['bias'].at[1::2].set(sign * 1e30)  # raw log-scales: +-1e30
  params = {**params, 'out': {**params['out'], 'bias': bias}}
  y, logdet = layer.apply({'params': params}, x)
  bound, d_b = layer.log_scale_bound, 4 * 4 * 2
  np.testing.assert_allclose(logdet, sign * bound * d_b, rtol=1e-6)  # |log_s| = bound exactly
  np.testing.assert_allclose(y[..., 2:], x[..., 2:] * np.exp(sign * bound), rtol=1e-5)
  back, inv_logdet = layer.apply({'params': params}, y, inverse=True)
  np.testing.assert_allclose(back, x, atol=1e-5)
  np.testing.assert_array_equal(inv_logdet, -logdet)


def test_bfloat16_conditioner_keeps_the_coupling_float32_and_exact():
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
  f32, bf16 = _coupling(), _coupling(jnp.bfloat16)
  params = f32.init(jax.random.key(1), x)['params']
  out = params['out']
  params = {**params, 'out': {**out, 'kernel': 0.3 * jax.random.normal(jax.random.key(2),
                                                                        out['kernel'].shape)}}
  assert jax.tree.structure(bf16.init(jax.random.key(1), x)['params']) == jax.tree.structure(params)
  jaxpr = str(jax.make_jaxpr(lambda x: bf16.apply({'params': params}, x))(x))
  assert 'bf16[2,4,4,8]' in jaxpr  # the conditioner's features
  y, logdet = bf16.apply({'params': params}, x)
  assert y.dtype == logdet.dtype == jnp.float32
  back, inv_logdet = bf16.apply({'params': params}, y, inverse=True)
  assert float(jnp.max(jnp.abs(back - x))) <= 1e-5
  np.testing.assert_array_equal(inv_logdet, -logdet)
  y32, logdet32 = f32.apply({'params': params}, x)
  np.testing.assert_allclose(logdet, logdet32, atol=0.1)  # bf16 rounding: close, not equal
  assert 0 < float(jnp.max(jnp.abs(y - y32))) < 5e-2


def test_bfloat16_dequantizer_keeps_log_q_float32():
  images = jnp.asarray(sources.synthetic_images(4, 8, 1, seed=0)[0], jnp.int32)
  f32, bf16 = VariationalDequantizer(1, 8), VariationalDequantizer(1, 8, dtype=jnp.bfloat16)
  rngs = {'params': jax.random.key(0), 'dequant': jax.random.key(1)}
  variables = f32.init(rngs, images, 8)
  jaxpr = str(jax.make_jaxpr(lambda v: bf16.apply(v, images, 8, rngs=rngs))(variables))
  assert 'bf16[4,8,8,8]' in jaxpr  # the context net's features
  (u32, lq32), (u16, lq16) = (m.apply(variables, images, 8, rngs=rngs) for m in (f32, bf16))
  assert u16.dtype == lq16.dtype == jnp.float32
  np.testing.assert_allclose(lq16, lq32, rtol=1e-2)
  np.testing.assert_allclose(u16, u32, atol=2e-2)


def _has_glow_dtype():
  from eiw_jax.backbones.glow import GlowStep  # pylint: disable=g-import-not-at-top
  return 'dtype' in GlowStep.__dataclass_fields__


@pytest.mark.skipif(not _has_glow_dtype(), reason='needs a dtype field on flow.GlowStep')
def test_bfloat16_model_loss_close_and_exact_round_trip():
  images = jnp.asarray(sources.synthetic_images(8, 8, 1, seed=0)[0], jnp.int32)
  cfg = smoke_config()
  cfg.data.image_size = 8
  models = {}
  for dtype in ('float32', 'bfloat16'):
    cfg.model.compute_dtype = dtype
    models[dtype] = build(cfg)
  m32, m16 = models['float32'], models['bfloat16']
  variables = api.init(m32, jax.random.key(0), images)
  key = jax.random.key(1)
  loss = jax.jit(lambda m, v: api.loss(m, v, images, key)[0], static_argnums=0)
  l32, l16 = loss(m32, variables), loss(m16, variables)
  assert l16.dtype == jnp.float32 and abs(float(l16 - l32)) < 1e-2 * abs(float(l32))
  y = to_continuous(images, 8)
  assert 'bf16' in str(jax.make_jaxpr(lambda v: api.forward(m16, v, y))(variables))
  _, logdet = api.forward(m16, variables, y)
  assert logdet.dtype == jnp.float32
  back = jax.jit(lambda v: api.decode(m16, v, api.encode(m16, v, y)))(variables)
  assert float(jnp.max(jnp.abs(back - y))) <= 1e-4
