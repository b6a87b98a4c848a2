"""The solver S (Eq. 8) and the guider G (Eq. 9-10)."""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
from flax import linen as nn

SOLVER_INPUTS = ('normalized', 'count')


class Solver(nn.Module):
  """S (Eq. 8): an MLP on the channel count 4C; returns the logits of Q, one per unit.

  With 4C units (one per channel, the paper): W1 in R^{2C x 1},
  L_S - 2 hidden layers 2C x 2C, last layer 4C x 2C (zero init, so Q starts
  uniform). With N units the widths are N/2 and N. `num_layers` is L_S.

  The input is a constant either way; what its value sets is the scale of every
  update. `input='count'` feeds the raw 4C as the paper writes it: the first
  layer's pre-activations are then ~N(0, (4C)^2) under the default (LeCun normal)
  init, and one optimiser step moves Q's logits by tens at 4C = 616.
  `input='normalized'` (the default) feeds 4C / 4C = 1, the scale of any
  normalised input, so the hidden activations are O(1) whatever 4C is.
  """
  num_units: int
  num_layers: int = 2
  input: str = 'normalized'
  channel_count: int = 0  # 4C, the input with input='count' (0: num_units)
  activation: Callable = nn.relu

  @nn.compact
  def __call__(self):
    if self.num_layers < 2:
      raise ValueError(f'solver needs num_layers >= 2 (L_S), got {self.num_layers}')
    if self.input not in SOLVER_INPUTS:
      raise ValueError(f"solver input must be one of {SOLVER_INPUTS}, got {self.input!r}")
    hidden = max(1, self.num_units // 2)
    value = 1.0 if self.input == 'normalized' else float(self.channel_count or self.num_units)
    h = jnp.full((1,), value, jnp.float32)  # the input: 4C (normalised: 4C / 4C)
    for _ in range(self.num_layers - 1):
      h = self.activation(nn.Dense(hidden)(h))
    return nn.Dense(self.num_units, kernel_init=nn.initializers.zeros, name='out')(h)


class Guider(nn.Module):
  """G (Eq. 9-10): global average pool -> FC (4C -> max(4C // r, min_width)) -> act
  -> FC -> logits of P, one per unit ([B, num_units]).

  The paper's hidden width is 4C // r: 15 and 38 at DenseFlow-74-10's transitions
  (r = 16), but 1 at a transition of 4C = 16 channels, where P could then only vary
  along one direction. `min_width` (model.guider_min_width, 8 by default; 1 in
  configs saved before it existed) is a floor below which the width never falls.
  """
  num_units: int
  reduction: int = 16
  min_width: int = 8
  activation: Callable = nn.relu

  @nn.compact
  def __call__(self, u):
    pooled = jnp.mean(u.astype(jnp.float32), axis=(1, 2))  # [B, 4C]
    width = max(1, self.min_width, u.shape[-1] // self.reduction)
    h = self.activation(nn.Dense(width)(pooled))
    return nn.Dense(self.num_units)(h)  # [B, num_units]
