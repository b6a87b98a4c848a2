"""Pure functions of the Shuffle: the shuffler's order, the KL of Eq. 11, and the
per-channel likelihood statistic the 'likelihood' and 'oracle' readings use."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def channel_order(scores: jnp.ndarray) -> jnp.ndarray:
  """The shuffler's permutation: stable argsort of the scores, descending ([4C] int32).

  softmax is monotonic, so sorting Q's logits sorts Q; ties keep their original
  order, so equal scores give the identity.
  """
  return jnp.argsort(-scores, stable=True).astype(jnp.int32)


def factored_mask(perm: jnp.ndarray) -> jnp.ndarray:
  """[4C] bool: True for the channels of u_k that `perm` factors out (the last half)."""
  n = perm.shape[-1]
  return jnp.zeros((n,), bool).at[perm[n // 2:]].set(True)


def kl_divergence(p_logits: jnp.ndarray, q_logits: jnp.ndarray) -> jnp.ndarray:
  """Eq. 11, averaged over the batch: mean_b sum_c P_bc (log P_bc - log Q_c)."""
  log_p = jax.nn.log_softmax(p_logits.astype(jnp.float32), axis=-1)
  log_q = jax.nn.log_softmax(q_logits.astype(jnp.float32), axis=-1)
  return jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1))


def soft_cross_entropy(target: jnp.ndarray, logits: jnp.ndarray) -> jnp.ndarray:
  """mean_b -sum_c T_bc log softmax(logits)_bc: fits a distribution to target T."""
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.sum(target * log_p, axis=-1))


def channel_nll(u: jnp.ndarray) -> jnp.ndarray:
  """[B, H, W, 4C] -> [B, 4C]: the NLL per dimension (nats) that the fixed N(0, I)
  split prior would charge each channel of u if it were factored out.

  E[-log N(u; 0, 1)] = H(u) + KL(p_u || N(0, 1)): the channel's entropy plus how
  far it is from the prior. Low: the prior already explains the channel.
  """
  u = u.astype(jnp.float32)
  return 0.5 * jnp.mean(jnp.square(u), axis=(1, 2)) + _HALF_LOG_2PI


def channel_divergence(u: jnp.ndarray) -> jnp.ndarray:
  """[B, H, W, 4C] -> [B, 4C]: how far each channel of u is from the N(0, 1) prior,
  as KL(N(m, v) || N(0, 1)) = (v + m^2 - 1 - log v) / 2 per dimension, with m and v
  the channel's mean and variance over the image's positions (nats).

  The part of channel_nll that the channel's own Gaussian entropy does not account
  for: 0 for a channel the prior already explains, large for one far from it (either
  much narrower, i.e. low entropy, or much wider).
  """
  u = u.astype(jnp.float32)
  mean = jnp.mean(u, axis=(1, 2))
  var = jnp.maximum(jnp.var(u, axis=(1, 2)), 1e-12)
  return 0.5 * (var + jnp.square(mean) - 1.0 - jnp.log(var))


STATISTICS = {'nll': channel_nll, 'divergence': channel_divergence}
