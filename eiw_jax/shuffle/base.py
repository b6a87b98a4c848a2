"""What every reading of the Shuffle shares: the shuffler and its exact inverse."""
from __future__ import annotations

from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from eiw_jax.bijectors.base import Bijector, zero_logdet
from eiw_jax.shuffle.nets import Guider, Solver
from eiw_jax.shuffle.ops import channel_order

# The flax collection that the readings' own fitting losses are sown into
# (api.loss adds them to the objective; they are not weighted by λ).
FIT_COLLECTION = 'shuffle_fit'


class ShuffleBase(Bijector):
  """A permutation of u_k's 4C channels given by `scores()` (descending, stable).

  Subclasses define `live_scores()` ([4C], independent of the data; Q's logits
  for the readings with a solver) and `penalties(u, live_scores) -> (kl, fit)`:
  the KL of Eq. 11 (weighted by λ in the objective) and the reading's own
  fitting loss (weight 1, or None).

  With `refresh_every > 1` a reading that learns its order keeps the scores the
  shuffler uses as a constant, `consts/.../order` (zero at init: the identity),
  which training refreshes from the live scores every `refresh_every` steps
  (`refresh_order`). The split the flow trains against then changes at most once
  per `refresh_every` steps, however noisy the live Q is; the KL always uses the
  live Q. With 1 the shuffler follows the live scores at every step.
  """
  num_channels: int
  refresh_every: int = 1

  learns_order = True  # False for readings whose order is fixed at build time

  def setup(self):
    self.committed = None
    if self.refresh_every > 1 and self.learns_order:
      self.committed = self.variable('consts', 'order', jnp.zeros, (self.num_channels,))

  def live_scores(self) -> jnp.ndarray:
    raise NotImplementedError

  def scores(self) -> jnp.ndarray:
    """The scores whose stable descending argsort is the permutation in use."""
    if self.committed is not None:
      return self.committed.value
    return self.live_scores()

  def penalties(self, u, scores) -> Tuple[jnp.ndarray, Optional[jnp.ndarray]]:
    del u, scores
    return jnp.zeros((), jnp.float32), None

  def __call__(self, u, inverse=False, **unused):
    self._check(u)
    if self.is_initializing() and not inverse:
      self.penalties(u, self.live_scores())  # create every parameter, whichever method inits
    perm = channel_order(self.scores())
    if inverse:
      perm = jnp.argsort(perm)
    return jnp.take(u, perm, axis=-1), zero_logdet(u)

  def forward_with_kl(self, u):
    """Inference direction with the penalty: returns (û [B,H,W,4C], KL scalar).

    The reading's fitting loss, if any, is sown into the 'shuffle_fit' collection.
    """
    self._check(u)
    kl, fit = self.penalties(u, self.live_scores())
    if fit is not None:
      self.sow(FIT_COLLECTION, 'loss', fit)
    return jnp.take(u, channel_order(self.scores()), axis=-1), kl

  def weights(self):
    """Channel weights [4C] (sum to 1) whose descending order is the permutation
    in use: the committed Q for the readings with a solver."""
    return jax.nn.softmax(self.scores())

  def _check(self, u):
    if u.shape[-1] != self.num_channels:
      raise ValueError(f'Shuffle built for {self.num_channels} channels got {u.shape[-1]}')


class SolverGuiderShuffle(ShuffleBase):
  """The paper's Shuffle: the solver S gives Q (the scores are Q's logits), the
  guider G gives P. The readings differ in what trains each (`penalties`)."""
  reduction: int = 16
  solver_layers: int = 2
  solver_input: str = 'normalized'

  def setup(self):
    super().setup()
    self.solver = Solver(self.num_channels, self.solver_layers, self.solver_input)
    self.guider = Guider(self.num_channels, self.reduction)

  def live_scores(self):
    return self.solver()

  def guide(self, u):
    """P, the guider's per-example channel weights [B, 4C] (each row sums to 1)."""
    return jax.nn.softmax(self.guider(u), axis=-1)
