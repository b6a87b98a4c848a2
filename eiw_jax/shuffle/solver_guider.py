"""The paper's Shuffle: solver S, guider G and shuffler, shared by the readings
'likelihood' and 'kl', which differ only in what trains each network."""
from __future__ import annotations

import jax

from eiw_jax.shuffle.base import ShuffleBase
from eiw_jax.shuffle.nets import Guider, Solver


class SolverGuiderShuffle(ShuffleBase):
  """The scores are the logits of the solver's Q; the guider gives P per example."""

  def setup(self):
    super().setup()
    s = self.settings
    self.solver = Solver(self.num_units, s.solver_layers, s.solver_input,
                         channel_count=self.num_channels)
    self.guider = Guider(self.num_units, s.reduction, s.guider_min_width)

  def live_scores(self):
    return self.solver()

  def guide(self, u):
    """P, the guider's per-example unit weights [B, number of units] (rows sum to 1)."""
    return jax.nn.softmax(self.guider(u), axis=-1)
