"""Bits/dim and the regularised objective (paper Eq. 12). Pure functions.

All per-image quantities are in nats. For D-dimensional b-bit images,
    log P(x) >= log p(y) - log q(u|x) - D * b * ln 2,   y = (x + u) / 2^b,
and bits/dim = -log P(x) / (D ln 2). The objective adds lambda * sum_k KL_k to
the per-image NLL in nats (lambda weighs KL against nats, not bits/dim).
"""
from __future__ import annotations

import math

import jax.numpy as jnp

LN2 = math.log(2.0)


def discretization_correction(num_dims: int, num_bits: int) -> float:
  """D * b * ln 2: the log-volume of one b-bit bin per dim, measured in y = (x+u)/2^b."""
  return num_dims * num_bits * LN2


def log_likelihood_bound(log_py, log_qu, num_dims: int, num_bits: int):
  """Per-image lower bound on log P(x) in nats: log p(y) - log q(u|x) - D b ln 2."""
  return log_py - log_qu - discretization_correction(num_dims, num_bits)


def bits_per_dim(log_prob, num_dims: int):
  """-log P(x) / (D ln 2), elementwise."""
  return -log_prob / (num_dims * LN2)


def objective(log_prob, kls, num_dims: int, kl_weight: float):
  """Eq. 12: mean_b[-log q(x_b)] + lambda * sum_k KL_k. Returns (loss, metrics).

  Args:
    log_prob: [B] lower bound on log P(x) in nats.
    kls: [K-1] KL(P || Q) per transition, each averaged over the batch.
    num_dims: D = H * W * C.
    kl_weight: lambda (1e-3 in the paper).
  Returns:
    loss in nats per image, and metrics: `loss_bpd` (the objective in bits/dim),
    `bpd` (the NLL alone), `kl` (sum over transitions), `nll` (nats).
  """
  nll = -jnp.mean(log_prob)
  kl = jnp.sum(kls)
  loss = nll + kl_weight * kl
  metrics = dict(loss=loss, loss_bpd=loss / (num_dims * LN2), bpd=nll / (num_dims * LN2),
                 kl=kl, nll=nll)
  return loss, metrics
