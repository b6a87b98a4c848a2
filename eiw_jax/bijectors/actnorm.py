"""ActNorm (Glow, Kingma & Dhariwal 2018): per-channel affine with data-dependent init.

forward: y = (x + loc) * exp(log_scale). On `init`, loc and log_scale are set from
the first batch so that y has zero mean and unit variance per channel. A channel
with zero variance gets log_scale = 0 (not +inf): `eps` bounds the scale.
The values are ordinary parameters: reloading a checkpoint never re-initialises.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from eiw_jax.bijectors.base import Bijector


class ActNorm(Bijector):
  """Per-channel affine y = (x + loc) * exp(log_scale) (Glow §3.1).

  `init` sets loc and log_scale from the first batch so that y has zero mean and
  unit variance per channel. logdet = H * W * sum(log_scale), per image [B].
  """
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x, inverse=False, **unused):
    axes = tuple(range(x.ndim - 1))

    def init_loc(_):
      return -jnp.mean(x, axis=axes).astype(jnp.float32)

    def init_log_scale(_):
      std = jnp.std(x.astype(jnp.float32), axis=axes)
      # Constant channels: keep scale 1 rather than dividing by ~0.
      return jnp.where(std > self.eps, -jnp.log(jnp.maximum(std, self.eps)), 0.0)

    loc = self.param('loc', init_loc)
    log_scale = self.param('log_scale', init_log_scale)
    num_pixels = x.size // (x.shape[0] * x.shape[-1])
    logdet = jnp.sum(log_scale) * num_pixels * jnp.ones(x.shape[:1], jnp.float32)
    if inverse:
      return (x * jnp.exp(-log_scale) - loc).astype(x.dtype), -logdet
    return ((x + loc) * jnp.exp(log_scale)).astype(x.dtype), logdet
