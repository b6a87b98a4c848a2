"""Reading 'oracle': the ordering set directly from the likelihood, no networks.

The scores s [4C] are running means of the statistic the 'likelihood' guider
fits: n_c = mean_b n_bc, the NLL per dimension that the N(0, I) split prior
would charge channel c if it were factored out now (ops.channel_nll). They are
fitted by the loss 0.5 * sum_c (s_c - n_c)^2 under plain SGD at rate
`optim.oracle_rate`, which makes each step s <- s + rate * (n - s): an
exponential moving average over about 1 / rate steps. `optim.shuffle_freeze_after`
stops the updates (and so fixes the permutation) after that many steps.
Channels with the highest cost go on; the ones the prior explains are factored
out. It starts at s = 0: the identity. `statistic='divergence'` follows
ops.channel_divergence instead (see likelihood.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from eiw_jax.shuffle.base import ShuffleBase
from eiw_jax.shuffle.ops import STATISTICS


class OracleShuffle(ShuffleBase):
  statistic: str = 'nll'  # or 'divergence' (ops.STATISTICS)

  def setup(self):
    super().setup()
    self.stats = self.param('stats', nn.initializers.zeros, (self.num_channels,))

  def live_scores(self):
    return self.stats

  def penalties(self, u, scores):
    target = jnp.mean(STATISTICS[self.statistic](jax.lax.stop_gradient(u)), axis=0)  # [4C]
    return jnp.zeros((), jnp.float32), 0.5 * jnp.sum(jnp.square(scores - target))
