"""Pure functions of the Shuffle: the shuffler's order (paper §3.4) and the KL of Eq. 11.

Units. u_k = Squeeze(h) holds feature map c of h at its four 2x2 sub-positions in
channels 4c..4c+3 (bijectors/squeeze.py). The Shuffle orders *units*: single
channels of u_k (`unit='channel'`, the paper's "channel feature maps" u_k^c of
Eq. 9) or whole pre-squeeze feature maps (`unit='map'`, four channels that move
together). `expand_units` turns an order of units into an order of channels.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

UNITS = {'channel': 1, 'map': 4}  # channels of u_k per unit
# 'keep_order': the scores choose which units go on; each half keeps the units'
# order in u_k. 'sorted': both halves in descending score order (before issue 26).
HALVES = ('keep_order', 'sorted')


def channel_order(scores: jnp.ndarray) -> jnp.ndarray:
  """Stable argsort of the scores, descending ([N] int32).

  softmax is monotonic, so sorting Q's logits sorts Q; ties keep their original
  order, so equal scores give the identity.
  """
  return jnp.argsort(-scores, stable=True).astype(jnp.int32)


def unit_order(scores: jnp.ndarray, halves: str = 'keep_order') -> jnp.ndarray:
  """The shuffler's order of N units from their scores ([N] int32): the N/2 units
  with the highest scores first (they go on), the rest after (factored out).

  halves='keep_order': within each half the units keep their order in u_k, so a
  change of the scores that keeps the set changes nothing. 'sorted': each half in
  descending score order.
  """
  order = channel_order(scores)
  if halves == 'sorted':
    return order
  if halves != 'keep_order':
    raise ValueError(f'halves must be one of {HALVES}, got {halves!r}')
  n = scores.shape[-1]
  factored = jnp.zeros((n,), bool).at[order[n // 2:]].set(True)
  return jnp.argsort(factored, stable=True).astype(jnp.int32)  # False (kept) first


def expand_units(order: jnp.ndarray, unit_size: int) -> jnp.ndarray:
  """An order of units -> the order of u_k's channels ([N * unit_size] int32)."""
  if unit_size == 1:
    return order
  return (order[:, None] * unit_size + jnp.arange(unit_size, dtype=order.dtype)).reshape(-1)


def factored_mask(perm: jnp.ndarray) -> jnp.ndarray:
  """[N] bool: True for the entries (channels or units) that `perm` factors out
  (the last half)."""
  n = perm.shape[-1]
  return jnp.zeros((n,), bool).at[perm[n // 2:]].set(True)


def kl_divergence(p_logits: jnp.ndarray, q_logits: jnp.ndarray) -> jnp.ndarray:
  """Eq. 11, averaged over the batch: mean_b sum_c P_bc (log P_bc - log Q_c)."""
  log_p = jax.nn.log_softmax(p_logits.astype(jnp.float32), axis=-1)
  log_q = jax.nn.log_softmax(q_logits.astype(jnp.float32), axis=-1)
  return jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1))


def soft_cross_entropy(target: jnp.ndarray, logits: jnp.ndarray) -> jnp.ndarray:
  """mean_b -sum_c T_bc log softmax(logits)_bc: fits a distribution to target T
  (T broadcasts against the logits: [1, N] is one target for every example)."""
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.sum(target * log_p, axis=-1))
