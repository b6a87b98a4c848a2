"""Bits/dim and the regularised objective (paper Eq. 12). Pure functions.

All per-image quantities are in nats. For D-dimensional b-bit images,
    log P(x) >= log p(y) - log q(u|x) - D * b * ln 2,   y = (x + u) / 2^b,
and bits/dim = -log P(x) / (D ln 2). The objective adds lambda * sum_k KL_k to
the per-image NLL in nats (kl_units='nats'), or to the NLL in bits/dim
(kl_units='bpd', as a trainer on bits/dim such as DenseFlow's would), which
weighs the KL D ln 2 times more; the loss itself is in nats either way.
"""
from __future__ import annotations

import math
from typing import Dict, Tuple, Union

import jax.numpy as jnp

LN2 = math.log(2.0)


def discretization_correction(num_dims: int, num_bits: int) -> float:
  """D * b * ln 2: the log-volume of one b-bit bin per dim, measured in y = (x+u)/2^b."""
  return num_dims * num_bits * LN2


def log_likelihood_bound(log_py, log_qu, num_dims: int, num_bits: int):
  """Per-image lower bound on log P(x) in nats: log p(y) - log q(u|x) - D b ln 2."""
  return log_py - log_qu - discretization_correction(num_dims, num_bits)


def bits_per_dim(log_prob: jnp.ndarray, num_dims: int) -> jnp.ndarray:
  """-log P(x) / (D ln 2), elementwise."""
  return -log_prob / (num_dims * LN2)


def kl_scale(num_dims: int, kl_units: str) -> float:
  """The factor on lambda * KL in a loss measured in nats (see the module docstring)."""
  if kl_units not in ('nats', 'bpd'):
    raise ValueError(f"kl_units must be 'nats' or 'bpd', got {kl_units!r}")
  return 1.0 if kl_units == 'nats' else num_dims * LN2


def objective(log_prob: jnp.ndarray, kls: jnp.ndarray, num_dims: int, kl_weight: float,
              kl_units: str = 'nats', fit: Union[float, jnp.ndarray] = 0.0
              ) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
  """Eq. 12: mean_b[-log q(x_b)] + lambda * sum_k KL_k (+ fit). Returns (loss, metrics).

  Args:
    log_prob: [B] lower bound on log P(x) in nats.
    kls: [K-1] KL(P || Q) per transition, each averaged over the batch.
    num_dims: D = H * W * C.
    kl_weight: lambda (1e-3 in the paper).
    kl_units: 'nats' or 'bpd': what lambda * KL is added to.
    fit: the Shuffle readings' own fitting losses (eiw_jax.shuffle), unweighted;
      they train only the guider or the oracle's statistics.
  Returns:
    loss in nats per image, and metrics: `loss_bpd` (NLL + lambda KL in bits/dim),
    `bpd` (the NLL alone), `kl` (sum over transitions), `nll` (nats), `shuffle_fit`.
  """
  nll = -jnp.mean(log_prob)
  kl = jnp.sum(kls)
  penalized = nll + kl_weight * kl_scale(num_dims, kl_units) * kl
  loss = penalized + fit
  metrics = dict(loss=loss, loss_bpd=penalized / (num_dims * LN2), bpd=nll / (num_dims * LN2),
                 kl=kl, nll=nll, shuffle_fit=jnp.asarray(fit, jnp.float32))
  return loss, metrics
