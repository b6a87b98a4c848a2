"""Reading 'fixed': an explicit order of units per transition, given in the config.

`model.shuffle_permutations[k]` is the order of transition k's units (channels,
or maps with `shuffle_unit='map'`): the first half go on, the rest are factored
out, exactly in the order given (`shuffle_halves` does not apply). No parameters
and no constants, so the variables are those of the vanilla flow: a vanilla run's
checkpoint continues under a fixed order unchanged, which is how a split chosen
from a trained model's statistics is trained on (experiments/shuffle_paired.py).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from eiw_jax.errors import UserError
from eiw_jax.shuffle.base import ShuffleBase
from eiw_jax.shuffle.random_order import scores_for


def check_permutation(order, num_units: int, transition: int) -> np.ndarray:
  order = np.asarray(order, np.int64).reshape(-1)
  if sorted(order.tolist()) != list(range(num_units)):
    raise UserError(
        f'model.shuffle_permutations[{transition}] must be a permutation of 0..{num_units - 1} '
        f'(the transition\'s {num_units} units), got {order.tolist()}')
  return order


class FixedShuffle(ShuffleBase):
  learns_order = False

  def _order(self) -> np.ndarray:
    given = self.settings.permutations
    if self.transition >= len(given):
      raise UserError(
          f"shuffle_mode='fixed' needs model.shuffle_permutations with one order per "
          f'transition; transition {self.transition} has none (got {len(given)})')
    return check_permutation(given[self.transition], self.num_units, self.transition)

  def live_scores(self):
    return scores_for(self._order())

  def unit_permutation(self):
    return jnp.asarray(self._order(), jnp.int32)
