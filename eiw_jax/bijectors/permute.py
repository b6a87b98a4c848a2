"""Fixed channel permutations for baselines: reverse (RealNVP), swap halves
(DenseFlow's channel switch), or a seeded random permutation (Glow's shuffle).

The permutation is a compile-time constant derived from the attributes, so it is
reproducible without being stored. logdet = 0.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from eiw_jax.bijectors.base import Bijector, zero_logdet


def fixed_permutation(num_channels: int, mode: str, seed: int = 0) -> np.ndarray:
  if mode == 'reverse':
    return np.arange(num_channels)[::-1].copy()
  if mode == 'swap':
    half = (num_channels + 1) // 2
    return np.concatenate([np.arange(half, num_channels), np.arange(half)])
  if mode == 'random':
    return np.random.default_rng(seed).permutation(num_channels)
  raise ValueError(f"unknown permutation mode {mode!r}; use 'reverse', 'swap' or 'random'")


class Permute(Bijector):
  """A fixed channel permutation ('reverse', 'swap' or a seeded 'random' one); logdet 0.

  'swap' and 'reverse' move contiguous blocks (a roll of the channels, a flip), so
  XLA sees slices and a concatenation, or a reversal, in both directions and in the
  backward pass. A gather by index (what 'random' is) has a scatter-add as its
  transpose, which XLA:CPU runs as a loop over the channels: on the paper's DenseFlow,
  whose every module ends with a swap, that was one scatter loop per module.
  """
  mode: str = 'reverse'
  seed: int = 0

  @nn.compact
  def __call__(self, x, inverse=False, **unused):
    c = x.shape[-1]
    if self.mode == 'reverse':
      return jnp.flip(x, axis=-1), zero_logdet(x)
    if self.mode == 'swap':  # [x[half:], x[:half]], half = ceil(c / 2)
      half = (c + 1) // 2
      return jnp.roll(x, half - c if inverse else -half, axis=-1), zero_logdet(x)
    perm = fixed_permutation(c, self.mode, self.seed)
    if inverse:
      perm = np.argsort(perm)
    return jnp.take(x, perm, axis=-1), zero_logdet(x)
