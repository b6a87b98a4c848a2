"""EIWFlow: dequantizer + multi-scale flow + the discrete log-likelihood bound.

Images are integers x in [0, 2^b)^{H x W x C}. The model sees
y = (x + u) / 2^b - 0.5 in [-0.5, 0.5) (the shift has logdet 0) and returns, per
image, the lower bound on log P(x) in nats (DESIGN §1) and the KL per transition.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from eiw_jax.dequant import standard_normal_logpdf
from eiw_jax.flow import MultiScaleFlow
from eiw_jax.losses import log_likelihood_bound


def to_continuous(x: jnp.ndarray, num_bits: int) -> jnp.ndarray:
  """Integer image -> the centre of its bin in y space, [-0.5, 0.5)."""
  return (x.astype(jnp.float32) + 0.5) / 2**num_bits - 0.5


def to_discrete(y: jnp.ndarray, num_bits: int) -> jnp.ndarray:
  """y in [-0.5, 0.5) -> integer image in [0, 2^b) (floor, clipped), int32."""
  x = jnp.floor((y + 0.5) * 2**num_bits)
  return jnp.clip(x, 0, 2**num_bits - 1).astype(jnp.int32)


class EIWFlow(nn.Module):
  """The whole density model. `__call__` (used by `init`) returns (log_prob, kls)."""
  flow: MultiScaleFlow
  dequantizer: nn.Module
  image_shape: Sequence[int]  # (H, W, C)
  num_bits: int = 8
  kl_weight: float = 1e-3
  kl_units: str = 'nats'  # lambda * KL added to the NLL in nats or in bits/dim

  @property
  def num_dims(self) -> int:
    return int(np.prod(self.image_shape))

  def __call__(self, x):
    """Integer images [B, H, W, C] -> (log P(x) lower bound [B] in nats, KL [K-1])."""
    u, log_q = self.dequantizer(x, self.num_bits)
    y = (x.astype(jnp.float32) + u) / 2**self.num_bits - 0.5
    latents, logdet, kls = self.flow(y)
    log_py = logdet + sum(standard_normal_logpdf(z) for z in latents)
    return log_likelihood_bound(log_py, log_q, self.num_dims, self.num_bits), kls

  def encode(self, y):
    """Continuous y -> (latents [z_1..z_K], logdet [B], KL [K-1])."""
    return self.flow(y)

  def decode(self, latents):
    """Latents -> (continuous y, logdet [B] of the inverse map)."""
    return self.flow(latents, inverse=True)

  def latent_log_prob(self, y):
    """log p(y) [B] of continuous y (no dequantization, no discretisation term):
    log N(z; 0, I) + log|det dz/dy|, z the standardised latents (every split prior's
    and the learned base's own logdet are in the flow's)."""
    latents, logdet, _ = self.flow(y)
    return logdet + sum(standard_normal_logpdf(z) for z in latents)

  def init_continuous(self, y):
    """For `init` from continuous y: every variable, the flow's data-dependent ones
    from y itself and the dequantizer's from the images y lies in."""
    self.dequantizer(to_discrete(y, self.num_bits), self.num_bits)
    return self.latent_log_prob(y)


def rngs_for(rng) -> dict:
  """The RNG streams a model call may draw from, split from one key."""
  dequant, noise = jax.random.split(rng)
  return {'dequant': dequant, 'noise': noise}
