"""The bijector contract, stated once for every invertible layer in eiw_jax.

Direction: `forward` maps data to latent (as in Glow and the EIW-Flow paper,
Eq. 5-7: the "inference" direction); `inverse` maps latent to data ("sampling").

Signature: both directions take and return NHWC arrays of the same layout::

    y, logdet = layer.apply(variables, x, method='forward')   # data -> latent
    x, logdet = layer.apply(variables, y, method='inverse')   # latent -> data

`logdet` has shape [B], dtype float32, summed over the event (H, W, C) dims.
It is log|det dy/dx| for `forward` and log|det dx/dy| for `inverse`, so the
two are negatives of each other at matching points. Both directions accept the
same keyword arguments (e.g. `context` for conditional layers).

Initialisation: `init` must run the `forward` direction on real data: layers
with data-dependent initialisation (ActNorm) read their first batch there. All
such values are stored as ordinary parameters, so restoring a checkpoint never
re-initialises them. Non-trainable constants that must be checkpointed (the LU
permutation and sign of an invertible 1x1 convolution) live in the `consts`
collection.

A subclass implements `__call__(x, inverse=False, **kwargs)` once, as an
`nn.compact` method; `forward` and `inverse` are thin named entry points.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn


class Bijector(nn.Module):
  """Base class: subclasses implement `__call__(x, inverse=False, **kwargs)`."""

  def forward(self, x, **kwargs):
    """Data -> latent. Returns (y, logdet[B])."""
    return self(x, inverse=False, **kwargs)

  def inverse(self, y, **kwargs):
    """Latent -> data. Returns (x, logdet[B])."""
    return self(y, inverse=True, **kwargs)


def zero_logdet(x) -> jnp.ndarray:
  """A float32 logdet of zeros, one per example."""
  return jnp.zeros(x.shape[:1], jnp.float32)


def sum_event(x) -> jnp.ndarray:
  """Sums every axis but the batch axis, in float32: [B, ...] -> [B]."""
  return jnp.sum(x.astype(jnp.float32), axis=tuple(range(1, x.ndim)))


def compose(layers, x, inverse: bool = False, **kwargs):
  """Applies bijectors in order (`forward`) or in reverse order (`inverse`) and sums
  their logdets: the one loop behind every composite layer. Called inside a
  module's `__call__`, the layers stay that module's children (their parameters
  keep their paths); `Chain` is the same as a module of its own."""
  total = zero_logdet(x)
  for layer in (reversed(layers) if inverse else layers):
    x, logdet = layer(x, inverse=inverse, **kwargs)
    total = total + logdet
  return x, total


class Chain(Bijector):
  """Composition of bijectors, applied in order for `forward`, reversed for `inverse`."""
  layers: tuple

  @nn.compact
  def __call__(self, x, inverse=False, **kwargs):
    return compose(self.layers, x, inverse, **kwargs)
