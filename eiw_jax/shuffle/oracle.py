"""Reading 'oracle': the order set directly from the statistic, no networks.

The scores s [number of units] are running means of the statistic that the
'likelihood' guider fits (statistics.py; by default 'dataset_kl', how far each
unit's distribution over the images is from the N(0, 1) prior), averaged over
the batch. They are fitted by the loss 0.5 * sum_c (s_c - n_c)^2 under plain SGD
at rate `optim.oracle_rate`, which makes each step s <- s + rate * (n - s): an
exponential moving average over about 1 / rate steps. `optim.shuffle_freeze_after`
stops the updates (and so fixes the permutation) after that many steps. The units
with the highest statistic go on; under 'dataset_kl' those closest to the prior
are factored out (the paper's direction). It starts at s = 0: the identity.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from eiw_jax.shuffle.base import ShuffleBase
from eiw_jax.shuffle.statistics import unit_statistic


class OracleShuffle(ShuffleBase):

  def setup(self):
    super().setup()
    self.stats = self.param('stats', nn.initializers.zeros, (self.num_units,))

  def live_scores(self):
    return self.stats

  def penalties(self, u, scores):
    target = jnp.mean(unit_statistic(jax.lax.stop_gradient(u), self.settings.statistic,
                                     self.settings.unit), axis=0)  # [number of units]
    return jnp.zeros((), jnp.float32), 0.5 * jnp.sum(jnp.square(scores - target))
