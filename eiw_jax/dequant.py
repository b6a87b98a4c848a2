"""Dequantization: from b-bit integer images to a continuous density (DESIGN §1).

A dequantizer maps the integer image x [B, H, W, C] (values in [0, 2^b)) to
noise u in [0, 1)^D and log q(u|x) [B]. The flow then models y = (x + u) / 2^b,
and
    -log P(x) <= -E_q[log p(y) - log q(u|x)] + D * b * ln 2.

- `UniformDequantizer`: u ~ U[0, 1)^D, log q = 0 (RealNVP, Glow).
- `VariationalDequantizer` (Flow++, Ho et al. 2019): u = sigmoid(g(eps; x)) with
  eps ~ N(0, I) and g a small conditional flow (squeeze, then steps of
  [ActNorm, 1x1 conv, affine coupling conditioned on a context net of x],
  unsqueeze): log q(u|x) = log N(eps) - log|det du/deps|.

Both draw their randomness from the 'dequant' RNG stream, per image (eiw_jax/noise.py:
image i uses fold_in(key, i), so its noise does not depend on the batch). `dtype` (e.g.
jnp.bfloat16) is the compute dtype of the variational dequantizer's networks
(the context net and the couplings' conditioners); its flow stays float32.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from eiw_jax import noise as per_image
from eiw_jax.bijectors import ActNorm, Coupling, InvConv1x1, squeeze, sum_event, unsqueeze
from eiw_jax.nets import Conv, ConvNet


def standard_normal_logpdf(x) -> jnp.ndarray:
  """Sum over event dims of log N(x; 0, I): [B, ...] -> [B]."""
  return sum_event(-0.5 * (jnp.square(x) + math.log(2 * math.pi)))


class UniformDequantizer(nn.Module):

  @nn.compact
  def __call__(self, x, num_bits):
    u = per_image.uniform(self.make_rng('dequant'), x.shape, jnp.float32)
    return u, jnp.zeros(x.shape[:1], jnp.float32)


class VariationalDequantizer(nn.Module):
  num_steps: int = 4
  hidden: int = 32
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x, num_bits):
    context = x.astype(jnp.float32) / 2**num_bits - 0.5
    context = Conv(self.hidden, 3, dtype=self.dtype, name='context')(context)
    context = squeeze(nn.relu(context))
    eps = per_image.normal(self.make_rng('dequant'), x.shape, jnp.float32)
    log_q = standard_normal_logpdf(eps)
    h = squeeze(eps)  # [B, H/2, W/2, 4C]: couplings need >= 2 channels
    net = functools.partial(ConvNet, hidden=self.hidden, dtype=self.dtype)
    for i in range(self.num_steps):
      for layer in (ActNorm(name=f'actnorm_{i}'), InvConv1x1(name=f'invconv_{i}'),
                    Coupling(net, name=f'coupling_{i}')):
        h, logdet = layer(h, context=context)
        log_q = log_q - logdet
    h = unsqueeze(h)
    u = jax.nn.sigmoid(h)
    # log sigmoid'(h) = log sigmoid(h) + log sigmoid(-h)
    log_q = log_q - sum_event(jax.nn.log_sigmoid(h) + jax.nn.log_sigmoid(-h))
    return u, log_q
