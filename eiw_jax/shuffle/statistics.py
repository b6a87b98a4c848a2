"""Per-channel statistics of u_k that the 'likelihood' and 'oracle' readings rank by.

Each maps u_k [B, H, W, 4C] to scores [N, 4C] (N = B for a per-image statistic,
1 for one over the batch). The readings send the units with the *highest* scores
on to the next scale and factor out the lowest (`unit_statistic` averages a map's
four channels). Which way that runs is the point of the paper:

- 'dataset_kl' (the default; the paper's direction): how far each channel's
  distribution over the images is from the N(0, 1) prior. The lowest are the
  channels that already look like the prior (high entropy, "more likely to follow
  a Gaussian distribution", §4 and Prop. 1): they are factored out; narrow,
  shifted or multimodal channels carry information not yet extracted and go on
  ("flow channel feature maps with incompletely extracted information to the
  next scale", §3.5).
- 'nll' (before issue 26): E[u^2/2] + log(2 pi)/2, the cross-entropy to N(0, 1)
  per image. The channel's own entropy dominates it, so it ranks narrow channels
  lowest and factors them out, although a channel of sd 0.05 is 2.5 nats (KL)
  from the prior: for narrow channels the reverse of the paper.
- 'divergence': KL(N(m, v) || N(0, 1)) with m, v one image's spatial mean and
  variance of the channel: the prior's distance, but within one image rather than
  over the data set (Eq. 13-14 take each element's distribution over the data).
"""
from __future__ import annotations

import math

import jax.numpy as jnp

from eiw_jax.shuffle.ops import UNITS

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
# Hyvarinen (1998), "New approximations of differential entropy for independent
# component analysis and projection pursuit", with G1(y) = y exp(-y^2/2) and
# G2(y) = exp(-y^2/2): J(y) ~ K1 E[G1]^2 + K2 (E[G2] - sqrt(1/2))^2.
_K1 = 36.0 / (8.0 * math.sqrt(3.0) - 9.0)
_K2 = 24.0 / (16.0 * math.sqrt(3.0) - 27.0)


def channel_nll(u: jnp.ndarray) -> jnp.ndarray:
  """[B, H, W, 4C] -> [B, 4C]: the NLL per dimension (nats) that the fixed N(0, I)
  split prior would charge each channel of one image if it were factored out:
  E[-log N(u; 0, 1)] = H(u) + KL(p_u || N(0, 1)). Lowest for the narrowest channels.
  """
  u = u.astype(jnp.float32)
  return 0.5 * jnp.mean(jnp.square(u), axis=(1, 2)) + _HALF_LOG_2PI


def channel_divergence(u: jnp.ndarray) -> jnp.ndarray:
  """[B, H, W, 4C] -> [B, 4C]: KL(N(m, v) || N(0, 1)) = (v + m^2 - 1 - log v) / 2 per
  dimension, with m and v the channel's mean and variance over one image's positions.
  0 for a channel whose values in the image look like the prior; large for one much
  narrower, wider or shifted."""
  u = u.astype(jnp.float32)
  mean = jnp.mean(u, axis=(1, 2))
  var = jnp.maximum(jnp.var(u, axis=(1, 2)), 1e-12)
  return 0.5 * (var + jnp.square(mean) - 1.0 - jnp.log(var))


def negentropy(y: jnp.ndarray, axis: int = 0) -> jnp.ndarray:
  """Hyvarinen's approximation of the negentropy J = H(Gaussian of the same
  variance) - H(y) >= 0 of standardised samples y along `axis` (nats).

  0 for Gaussian samples (up to sampling noise); about 0.34 for a symmetric +-1
  two-point distribution. It is smooth in the samples and has little bias at the
  sample sizes of a training batch, where a histogram of 64 values would not.
  """
  g = jnp.exp(-0.5 * jnp.square(y))
  return (_K1 * jnp.square(jnp.mean(y * g, axis=axis))
          + _K2 * jnp.square(jnp.mean(g, axis=axis) - math.sqrt(0.5)))


def dataset_kl(u: jnp.ndarray) -> jnp.ndarray:
  """[B, H, W, 4C] -> [1, 4C]: KL(p || N(0, 1)) of each element's distribution over
  the B images (paper Eq. 13-14: an element is one position of one channel),
  averaged over the positions (nats per dimension).

  For an element with mean m and variance v over the images,
  KL(p || N(0, 1)) = KL(N(m, v) || N(0, 1)) + J(p) exactly, J the negentropy
  (how far p is from the Gaussian with its own moments): the first term sees a
  narrow, wide or shifted channel, J a multimodal or skewed one of unit variance.
  J is estimated by `negentropy`. Needs B >= 2 (more for a useful estimate).
  """
  u = u.astype(jnp.float32)
  mean = jnp.mean(u, axis=0)  # [H, W, 4C]
  var = jnp.maximum(jnp.var(u, axis=0), 1e-12)
  moments = 0.5 * (var + jnp.square(mean) - 1.0 - jnp.log(var))
  shape = negentropy((u - mean) / jnp.sqrt(var), axis=0)
  return jnp.mean(moments + shape, axis=(0, 1))[None]


STATISTICS = {'dataset_kl': dataset_kl, 'nll': channel_nll, 'divergence': channel_divergence}


def unit_statistic(u: jnp.ndarray, statistic: str, unit: str = 'channel') -> jnp.ndarray:
  """[B, H, W, 4C] -> [N, number of units]: the statistic per channel, or averaged
  over each map's four channels for unit='map'."""
  if statistic not in STATISTICS:
    raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
  per_channel = STATISTICS[statistic](u)
  size = UNITS[unit]
  if size == 1:
    return per_channel
  return jnp.mean(per_channel.reshape(*per_channel.shape[:-1], -1, size), axis=-1)
