"""The EIW Shuffle (paper §3.2-3.5, Eq. 8-11, Fig. 3, Algorithm 1) and its readings.

At a transition, u_k = Squeeze(...) has 4C channels. The Shuffle reorders them;
the first 2C go on to the next scale and the last 2C are factored out (z_k):

    perm = the units with the highest scores first               # the shuffler
    û_k  = u_k[..., perm]                                        # logdet exactly 0

The scores never depend on the data being transformed, so the permutation is the
same in inference and sampling and the inverse (argsort(perm)) is exact. Every
reading with parameters starts with equal scores, whose order is the identity: at
init the EIW flow equals the vanilla multi-scale flow.

Which units are factored out is the paper's point: those whose values already look
like the N(0, 1) prior (high entropy, §4, Prop. 1), while the information-rich
ones go on (§3.5). A unit is one channel of u_k (`model.shuffle_unit='channel'`,
the paper's "channel feature map") or one pre-squeeze feature map, four channels
that move together ('map'). `model.shuffle_halves='keep_order'` (the default)
lets the scores choose only which units go on; each half keeps its order in u_k.

The paper leaves open how the likelihood reaches the Shuffle (the argsort has no
gradient). `model.shuffle_mode` picks a reading; each lives in its own module:

- 'likelihood' (likelihood.py, the default, §3.5 and §4): the guider fits a
  target built from each unit's distance to the prior over the images
  (statistics.py, 'dataset_kl'); the KL trains only the solver, pulling Q toward
  P. The units closest to the prior are factored out.
- 'kl' (kl.py, Algorithm 1 read literally): the whole objective's gradient
  reaches every parameter. The likelihood never reaches S or G, so they only
  learn to agree with each other: the permutation is arbitrary.
- 'oracle' (oracle.py): no networks; the scores are running means of the same
  statistic the 'likelihood' guider fits. The reference a learned order should
  approach.
- 'random' (random_order.py): a fixed, seeded random order per transition, no
  parameters. The control every claim about an order must beat.
- 'fixed' (fixed.py): an explicit order per transition from the config, no
  parameters: a split chosen from a trained model, trained on from its checkpoint.
`model.shuffle=False` is the vanilla flow (no Shuffle at all).

The solver and the oracle's statistics are updated by plain SGD of their own
(`param_labels` marks them; eiw_jax.train.optimizer), so λ sets how fast Q
follows P; the order the shuffler uses is a constant that the model's own
training apply refreshes from them every `model.shuffle_refresh_every` steps
(base.py), so the split changes at most that often. See docs/SHUFFLE.md.

This package belongs to the model library: it imports nothing of training.
"""
from eiw_jax.shuffle.base import ShuffleBase
from eiw_jax.shuffle.fixed import FixedShuffle
from eiw_jax.shuffle.kl import KLShuffle
from eiw_jax.shuffle.likelihood import LikelihoodShuffle
from eiw_jax.shuffle.nets import Guider, Solver
from eiw_jax.shuffle.ops import (HALVES, UNITS, channel_order, expand_units, factored_mask,
                                 kl_divergence, soft_cross_entropy, unit_order)
from eiw_jax.shuffle.oracle import OracleShuffle
from eiw_jax.shuffle.random_order import RandomShuffle
from eiw_jax.shuffle.settings import (CONFIG_KEYS, MODE_NAMES, ShuffleSettings, check_settings,
                                      config_defaults, from_config, permutations_from)
from eiw_jax.shuffle.labels import LABELS, param_labels
from eiw_jax.shuffle.state import (commit_live_orders, split_changes, transition_permutations,
                                   transition_scores)
from eiw_jax.shuffle.statistics import (STATISTICS, channel_divergence, channel_nll,
                                        dataset_kl, negentropy, unit_statistic)

MODES = {'likelihood': LikelihoodShuffle, 'kl': KLShuffle, 'oracle': OracleShuffle,
         'random': RandomShuffle, 'fixed': FixedShuffle}
assert tuple(MODES) == MODE_NAMES
# The default reading: the paper's Shuffle as this library reads it.
Shuffle = LikelihoodShuffle


def make_shuffle(settings: ShuffleSettings, num_channels: int, *, transition: int = 0,
                 name=None) -> ShuffleBase:
  """The Shuffle of reading `settings.mode` at transition `transition` (0-based) of a
  u_k with `num_channels` (4C) channels."""
  if settings.mode not in MODES:
    raise ValueError(f"shuffle mode must be one of {', '.join(MODES)}, got {settings.mode!r}")
  return MODES[settings.mode](num_channels, settings=settings, transition=transition, name=name)


__all__ = ['CONFIG_KEYS', 'FixedShuffle', 'Guider', 'HALVES', 'KLShuffle', 'LABELS',
           'LikelihoodShuffle', 'MODES', 'OracleShuffle', 'RandomShuffle', 'STATISTICS',
           'Shuffle', 'ShuffleBase', 'ShuffleSettings', 'Solver', 'UNITS', 'channel_divergence',
           'channel_nll', 'channel_order', 'check_settings', 'commit_live_orders',
           'config_defaults', 'dataset_kl', 'expand_units', 'factored_mask', 'from_config',
           'kl_divergence', 'make_shuffle', 'negentropy', 'param_labels', 'permutations_from',
           'soft_cross_entropy', 'split_changes', 'transition_permutations', 'transition_scores',
           'unit_order', 'unit_statistic']
