"""Reading 'likelihood' (paper §3.5 and §4): the guider learns from the data what the
likelihood needs, the solver follows it, and the Gaussian-like units are factored out.

§3.5: "By focusing the G's training on maximizing the dataset's likelihood ...
without the influence of the KL loss, each element in P can reflect the richness
and importance of the corresponding channel feature map's feature information."
§4 (Prop. 1): the shuffle identifies "the elements with smaller values, i.e.,
higher entropy, along with their corresponding channel feature maps to form the
final latent variable"; §3.5: "flow channel feature maps with incompletely
extracted information to the next scale ... this process refines the final
latent variables to better approximate a normal distribution".

The argsort has no gradient, so this is brought to the guider as a target. The
statistic s (statistics.py; `model.shuffle_statistic`, by default 'dataset_kl':
how far each unit's distribution over the batch's images is from the N(0, 1)
prior) is standardised over the units and turned into a distribution
T = softmax((s - mean) / std). The guider fits it, P_b -> T, by cross-entropy;
u_k and T are held constant, so this loss trains the guider and nothing else.
The KL of Eq. 11 is taken with P held constant, so it trains only the solver: Q
follows the mean of P, and the shuffler sends the units with the largest Q (the
furthest from the prior: narrow, shifted, multimodal) on to the next scale and
factors out those closest to it. With `shuffle_statistic='nll'` (configs before
issue 26) the ranking is by the prior's cross-entropy instead, which factors out
the narrowest units: for them the reverse of the paper (statistics.py).

The statistic assumes the paper's fixed N(0, I) split prior (model.split_prior =
'standard'); with Glow's conditional prior it is the distance before that prior.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from eiw_jax.shuffle.ops import kl_divergence, soft_cross_entropy
from eiw_jax.shuffle.solver_guider import SolverGuiderShuffle
from eiw_jax.shuffle.statistics import unit_statistic


def unit_target(u: jnp.ndarray, statistic: str = 'dataset_kl', unit: str = 'channel'):
  """[B, H, W, 4C] -> T [N, number of units] (N = B or 1): softmax over the units of
  the standardised statistic. The largest T goes with the largest statistic."""
  s = unit_statistic(u, statistic, unit)
  mean = jnp.mean(s, axis=-1, keepdims=True)
  std = jnp.std(s, axis=-1, keepdims=True)
  return jax.nn.softmax((s - mean) / (std + 1e-6), axis=-1)


class LikelihoodShuffle(SolverGuiderShuffle):
  """Solver + shuffler + guider; the guider fits the target T, the solver fits the
  guider through the KL."""

  def penalties(self, u, scores):
    u = jax.lax.stop_gradient(u)
    p_logits = self.guider(u)
    fit = soft_cross_entropy(unit_target(u, self.settings.statistic, self.settings.unit),
                             p_logits)
    kl = kl_divergence(jax.lax.stop_gradient(p_logits), scores)
    return kl, fit
