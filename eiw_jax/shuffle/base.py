"""What every reading of the Shuffle shares: its settings, the shuffler and its exact inverse."""
from __future__ import annotations

from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from eiw_jax.bijectors.base import Bijector, zero_logdet
from eiw_jax.shuffle.ops import UNITS, expand_units, unit_order
from eiw_jax.shuffle.settings import ShuffleSettings

# The flax collection that the readings' own fitting losses are sown into
# (api.loss adds them to the objective; they are not weighted by λ).
FIT_COLLECTION = 'shuffle_fit'
# The collection u_k is sown into when it is mutable (eiw_jax.shuffle_info only).
INPUT_COLLECTION = 'shuffle_input'


class ShuffleBase(Bijector):
  """A permutation of u_k's 4C channels, fixed for any input (paper §3.4).

  Subclasses define `live_scores()` ([number of units], independent of the data;
  Q's logits for the readings with a solver) and `penalties(u, live_scores) ->
  (kl, fit)`: the KL of Eq. 11 (weighted by λ in the objective) and the reading's
  own fitting loss (weight 1, or None). The units with the highest scores go on
  to the next scale (`ops.unit_order`).

  With `refresh_every > 1` a reading that learns its order keeps the scores the
  shuffler uses as a constant, `consts/.../order` (zero at init: the identity),
  and counts the training applies in `consts/.../updates`. A training apply is one
  with the 'consts' collection mutable (as batch statistics are updated): the
  `forward_with_kl` of the t-th such apply (t = 0, 1, ...: the number of updates
  the parameters have had) first replaces the order by the live scores when t is a
  multiple of `refresh_every`, so the order used from then on is the one the
  parameters after update t give. Any training loop that keeps the 'consts' its
  apply returns (eiw_jax.train_loss) refreshes the order exactly as train.py's.
  The split the flow trains against changes at most once per `refresh_every`
  steps, however noisy the live Q is; the KL always uses the live Q. With 1 the
  shuffler follows the live scores at every step.
  """
  num_channels: int
  settings: ShuffleSettings = ShuffleSettings()
  transition: int = 0

  learns_order = True  # False for readings whose order is fixed at build time

  @property
  def unit_size(self) -> int:
    return UNITS[self.settings.unit]

  @property
  def num_units(self) -> int:
    return self.num_channels // self.unit_size

  def setup(self):
    if self.settings.unit not in UNITS:
      raise ValueError(f'shuffle unit must be one of {tuple(UNITS)}, got {self.settings.unit!r}')
    if self.num_channels % (2 * self.unit_size):
      raise ValueError(
          f"shuffle unit {self.settings.unit!r} needs a channel count divisible by "
          f'{2 * self.unit_size} (whole units in each half), got {self.num_channels}; use '
          "shuffle_unit='channel'")
    self.committed = self.updates = None
    if self.settings.refresh_every > 1 and self.learns_order:
      self.committed = self.variable('consts', 'order', jnp.zeros, (self.num_units,))
      self.updates = self.variable('consts', 'updates', lambda: jnp.zeros((), jnp.int32))

  def live_scores(self) -> jnp.ndarray:
    raise NotImplementedError

  def scores(self) -> jnp.ndarray:
    """The scores [number of units] behind the order in use."""
    if self.committed is not None:
      return self.committed.value
    return self.live_scores()

  def unit_permutation(self) -> jnp.ndarray:
    """The order of units in use ([number of units] int32): those going on first."""
    return unit_order(self.scores(), self.settings.halves)

  def permutation(self) -> jnp.ndarray:
    """The shuffler's permutation of u_k's channels: û_k = u_k[..., perm] ([4C] int32)."""
    return expand_units(self.unit_permutation(), self.unit_size)

  def penalties(self, u, scores) -> Tuple[jnp.ndarray, Optional[jnp.ndarray]]:
    del u, scores
    return jnp.zeros((), jnp.float32), None

  def __call__(self, u, inverse=False, **unused):
    self._check(u)
    if self.is_initializing() and not inverse:
      self.penalties(u, self.live_scores())  # create every parameter, whichever method inits
    perm = self.permutation()
    if inverse:
      perm = jnp.argsort(perm)
    return jnp.take(u, perm, axis=-1), zero_logdet(u)

  def refresh(self) -> None:
    """In a training apply: count it, and refresh the order in use from the live
    scores every `refresh_every` of them (see the class docstring)."""
    if (self.committed is None or self.is_initializing()
        or not self.is_mutable_collection('consts')):
      return
    count = self.updates.value
    live = jax.lax.stop_gradient(self.live_scores())
    self.committed.value = jnp.where(count % self.settings.refresh_every == 0, live,
                                     self.committed.value)
    self.updates.value = count + 1

  def forward_with_kl(self, u):
    """Inference direction with the penalty: returns (û [B,H,W,4C], KL scalar).

    The reading's fitting loss, if any, is sown into the 'shuffle_fit' collection,
    and u itself into 'shuffle_input' when that is mutable (eiw_jax.shuffle_info);
    in a training apply the order is refreshed first (`refresh`).
    """
    self._check(u)
    if not self.is_initializing():  # init makes every collection mutable: not for this one
      self.sow(INPUT_COLLECTION, 'u', u)
    self.refresh()
    kl, fit = self.penalties(u, self.live_scores())
    if fit is not None:
      self.sow(FIT_COLLECTION, 'loss', fit)
    return jnp.take(u, self.permutation(), axis=-1), kl

  def _check(self, u):
    if u.shape[-1] != self.num_channels:
      raise ValueError(f'Shuffle built for {self.num_channels} channels got {u.shape[-1]}')
