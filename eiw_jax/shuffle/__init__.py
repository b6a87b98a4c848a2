"""The EIW Shuffle (paper §3.2-3.5, Eq. 8-11, Fig. 3, Algorithm 1) and its readings.

At a transition, u_k = Squeeze(...) has 4C channels. The Shuffle reorders them;
the first 2C go on to the next scale and the last 2C are factored out (z_k):

    perm = stable argsort of the reading's scores, descending   # the shuffler
    û_k  = u_k[..., perm]                                       # logdet exactly 0

The scores never depend on the data being transformed, so the permutation is the
same in inference and sampling and the inverse (argsort(perm)) is exact. Every
reading with parameters starts with equal scores, whose stable argsort is the
identity: at init the EIW flow equals the vanilla multi-scale flow.

The paper leaves open how the likelihood reaches the Shuffle (the argsort has no
gradient). `model.shuffle_mode` picks a reading; each lives in its own module:

- 'likelihood' (likelihood.py, the default, §3.5): "By focusing the G's training
  on maximizing the dataset's likelihood ... without the influence of the KL
  loss, each element in P can reflect the richness and importance of the
  corresponding channel feature map's feature information." The guider fits a
  target built from the likelihood (the NLL the N(0, I) prior would charge each
  channel if it were factored out now); the KL trains only the solver, pulling Q
  toward P. The channels the prior explains worst go on (§4).
- 'kl' (kl.py, Algorithm 1 read literally): the whole objective's gradient
  reaches every parameter. The likelihood never reaches S or G, so they only
  learn to agree with each other: the permutation is arbitrary.
- 'random' (random.py): a fixed, seeded random permutation per transition, no
  parameters. The control every claim about an ordering must beat.
- 'oracle' (oracle.py): no networks; the scores are running means of the same
  per-channel statistic the 'likelihood' guider fits. The reference a learned
  ordering should approach.
`model.shuffle=False` is the vanilla flow (no Shuffle at all).

The solver and the oracle's statistics are updated by plain SGD of their own
(train_lib.make_optimizer), so λ sets how fast Q follows P; the order the
shuffler uses is a constant refreshed from them every `model.shuffle_refresh_every`
steps (base.py), so the split changes at most that often. See the README.
"""
from eiw_jax.shuffle.base import ShuffleBase
from eiw_jax.shuffle.inspect import refresh_orders, split_changes, transition_scores
from eiw_jax.shuffle.kl import KLShuffle
from eiw_jax.shuffle.likelihood import LikelihoodShuffle
from eiw_jax.shuffle.nets import Guider, Solver
from eiw_jax.shuffle.ops import (STATISTICS, channel_divergence, channel_nll, channel_order,
                                 factored_mask, kl_divergence, soft_cross_entropy)
from eiw_jax.shuffle.oracle import OracleShuffle
from eiw_jax.shuffle.random import RandomShuffle

MODES = {'likelihood': LikelihoodShuffle, 'kl': KLShuffle, 'random': RandomShuffle,
         'oracle': OracleShuffle}
# The reading whose solver and guider make up the paper's Shuffle: kept as the
# name other code and older imports use.
Shuffle = KLShuffle


def make_shuffle(mode: str, num_channels: int, *, transition: int = 0, reduction: int = 16,
                 solver_layers: int = 2, solver_input: str = 'normalized',
                 kl_grad_to_guider: bool = True, seed: int = 0, refresh_every: int = 1,
                 statistic: str = 'nll', name=None) -> ShuffleBase:
  """The Shuffle of reading `mode` at transition `transition` (0-based)."""
  if mode not in MODES:
    raise ValueError(f"shuffle mode must be one of {', '.join(MODES)}, got {mode!r}")
  if mode == 'random':
    return RandomShuffle(num_channels, seed=seed, transition=transition, name=name)
  if mode == 'oracle':
    return OracleShuffle(num_channels, refresh_every=refresh_every, statistic=statistic,
                         name=name)
  kwargs = dict(reduction=reduction, solver_layers=solver_layers, solver_input=solver_input,
                refresh_every=refresh_every)
  if mode == 'kl':
    kwargs['kl_grad_to_guider'] = kl_grad_to_guider
  else:
    kwargs['statistic'] = statistic
  return MODES[mode](num_channels, name=name, **kwargs)


__all__ = ['Guider', 'KLShuffle', 'LikelihoodShuffle', 'MODES', 'OracleShuffle', 'RandomShuffle',
           'STATISTICS', 'Shuffle', 'ShuffleBase', 'Solver', 'channel_divergence', 'channel_nll',
           'channel_order', 'factored_mask',
           'kl_divergence', 'make_shuffle', 'refresh_orders', 'soft_cross_entropy', 'split_changes',
           'transition_scores']
