"""Reading 'random': a fixed, seeded random permutation per transition (the control).

No parameters, no penalty. Any ordering moves channels between x_k and z_k, so a
claim that a learned ordering helps must beat this one, not only the identity.
The permutation depends on (model.shuffle_seed, transition) only.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from eiw_jax.shuffle.base import ShuffleBase


def random_permutation(num_channels: int, seed: int, transition: int) -> np.ndarray:
  return np.random.default_rng([seed, transition]).permutation(num_channels)


class RandomShuffle(ShuffleBase):
  seed: int = 0
  transition: int = 0
  learns_order = False

  def live_scores(self):
    perm = random_permutation(self.num_channels, self.seed, self.transition)
    scores = np.empty(self.num_channels, np.float32)
    scores[perm] = np.arange(self.num_channels, 0, -1)  # descending order is perm
    return jnp.asarray(scores)
