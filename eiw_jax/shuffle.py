"""The EIW Shuffle operation (paper §3.2-3.5, Eq. 8-11, Fig. 3, Algorithm 1).

At a transition, u_k = Squeeze(...) has 4C channels. The Shuffle reorders them so
that the channels the solver rates highest go on to the next scale and the rest
are factored out by the split:

    Q    = solver(4C)                       # Eq. 8, [4C], sums to 1
    perm = stable argsort of Q, descending  # shuffler
    û_k  = u_k[..., perm]                   # logdet exactly 0
    P    = guider(u_k)                      # Eq. 9-10, [B, 4C], sums to 1
    KL_k = mean_b KL(P_b || Q)              # Eq. 11

The solver's only input is the scalar channel count, so Q (and the permutation)
is the same in inference and sampling: the inverse applies argsort(perm) and is
exact. The permutation is a hard argsort: no gradient passes through it, so the
solver learns only through the KL term. Q starts uniform (zero last layer), the
stable argsort of equal values is the identity, and the EIW flow then equals the
vanilla multi-scale flow.

Which gradients the KL sends (the paper gives two readings):
- `kl_grad_to_guider=True` (default, Algorithm 1): the gradient of the whole
  objective reaches every parameter: the solver, the guider, and through the
  guider's input u_k the flow before the transition.
- `kl_grad_to_guider=False` (§3.5, "the guider is trained without the influence
  of the KL loss"): P is held constant in the KL (stop_gradient), so the KL
  trains the solver only. Note the guider's P enters no other term, so under this
  reading the guider keeps its initial weights.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from eiw_jax.bijectors.base import Bijector, zero_logdet


class Solver(nn.Module):
  """S (Eq. 8): an MLP on the scalar channel count 4C; returns logits of Q [4C].

  W1 in R^{2C x 1}, L_S - 2 hidden layers 2C x 2C, last layer 4C x 2C (zero init,
  so Q starts uniform). `num_layers` is L_S.
  """
  num_channels: int
  num_layers: int = 2
  activation: Callable = nn.relu

  @nn.compact
  def __call__(self):
    if self.num_layers < 2:
      raise ValueError(f'solver needs num_layers >= 2 (L_S), got {self.num_layers}')
    hidden = self.num_channels // 2
    h = jnp.full((1,), float(self.num_channels), jnp.float32)  # the input: 4C
    for _ in range(self.num_layers - 1):
      h = self.activation(nn.Dense(hidden)(h))
    return nn.Dense(self.num_channels, kernel_init=nn.initializers.zeros, name='out')(h)


class Guider(nn.Module):
  """G (Eq. 9-10): global average pool -> FC (4C -> 4C // r) -> act -> FC -> logits of P."""
  num_channels: int
  reduction: int = 16
  activation: Callable = nn.relu

  @nn.compact
  def __call__(self, u):
    pooled = jnp.mean(u.astype(jnp.float32), axis=(1, 2))  # [B, 4C]
    h = self.activation(nn.Dense(max(1, self.num_channels // self.reduction))(pooled))
    return nn.Dense(self.num_channels)(h)  # [B, 4C]


def channel_order(q_logits: jnp.ndarray) -> jnp.ndarray:
  """The shuffler's permutation: stable argsort of Q, descending ([4C] int32).

  softmax is monotonic, so sorting logits sorts Q; ties keep their original
  order, so uniform Q gives the identity.
  """
  return jnp.argsort(-q_logits, stable=True).astype(jnp.int32)


def kl_divergence(p_logits: jnp.ndarray, q_logits: jnp.ndarray) -> jnp.ndarray:
  """Eq. 11, averaged over the batch: mean_b sum_c P_bc (log P_bc - log Q_c)."""
  log_p = jax.nn.log_softmax(p_logits.astype(jnp.float32), axis=-1)
  log_q = jax.nn.log_softmax(q_logits.astype(jnp.float32), axis=-1)
  return jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1))


class Shuffle(Bijector):
  """Solver + shuffler (+ guider and KL during training) at one transition."""
  num_channels: int
  reduction: int = 16
  solver_layers: int = 2
  kl_grad_to_guider: bool = True

  def setup(self):
    self.solver = Solver(self.num_channels, self.solver_layers)
    self.guider = Guider(self.num_channels, self.reduction)

  def __call__(self, u, inverse=False, **unused):
    self._check(u)
    if self.is_initializing() and not inverse:
      self.guider(u)  # create the guider's parameters whichever method inits
    perm = channel_order(self.solver())
    if inverse:
      perm = jnp.argsort(perm)
    return jnp.take(u, perm, axis=-1), zero_logdet(u)

  def forward_with_kl(self, u):
    """Inference direction with the penalty: returns (û [B,H,W,4C], KL scalar)."""
    self._check(u)
    q_logits = self.solver()
    p_logits = self.guider(u)
    if not self.kl_grad_to_guider:
      p_logits = jax.lax.stop_gradient(p_logits)
    shuffled = jnp.take(u, channel_order(q_logits), axis=-1)
    return shuffled, kl_divergence(p_logits, q_logits)

  def weights(self):
    """Q, the solver's channel weights [4C] (sums to 1)."""
    return jax.nn.softmax(self.solver())

  def guide(self, u):
    """P, the guider's per-example channel weights [B, 4C] (each row sums to 1)."""
    return jax.nn.softmax(self.guider(u), axis=-1)

  def _check(self, u):
    if u.shape[-1] != self.num_channels:
      raise ValueError(f'Shuffle built for {self.num_channels} channels got {u.shape[-1]}')
