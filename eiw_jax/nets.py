"""Conditioner networks for couplings: not invertible, any architecture will do.

A conditioner maps the conditioning half (and optional context) to a feature map;
the coupling owns the zero-initialised output layer, so every coupling starts as
the identity whatever conditioner it is given.
"""
from __future__ import annotations

from typing import Any, Optional

import jax.numpy as jnp
from flax import linen as nn


class ConvNet(nn.Module):
  """Glow's conditioner: 3x3 conv -> ReLU -> 1x1 conv -> ReLU (features out).

  `dtype` (e.g. jnp.bfloat16) is the compute dtype of the convolutions and of the
  output; None computes in float32. Parameters are float32 either way.
  """
  hidden: int = 512
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x, context: Optional[jnp.ndarray] = None):
    if self.dtype is not None:
      x = x.astype(self.dtype)
    if context is not None:
      x = jnp.concatenate([x, context.astype(x.dtype)], axis=-1)
    x = nn.relu(nn.Conv(self.hidden, (3, 3), dtype=self.dtype)(x))
    return nn.relu(nn.Conv(self.hidden, (1, 1), dtype=self.dtype)(x))
