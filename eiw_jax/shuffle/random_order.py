"""Reading 'random': a fixed, seeded random order of units per transition (the control).

No parameters, no penalty. Any order moves units between x_k and z_k, so a claim
that a learned order helps must beat this one, not only the identity. The order
depends on (model.shuffle_seed, transition) only; with `halves='keep_order'` it
chooses a random half of the units to go on, each half in its order in u_k.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from eiw_jax.shuffle.base import ShuffleBase


def random_permutation(num_units: int, seed: int, transition: int) -> np.ndarray:
  return np.random.default_rng([seed, transition]).permutation(num_units)


def scores_for(order: np.ndarray) -> jnp.ndarray:
  """Scores whose stable descending argsort is `order`."""
  scores = np.empty(len(order), np.float32)
  scores[np.asarray(order)] = np.arange(len(order), 0, -1)
  return jnp.asarray(scores)


class RandomShuffle(ShuffleBase):
  learns_order = False

  def live_scores(self):
    return scores_for(random_permutation(self.num_units, self.settings.seed, self.transition))
