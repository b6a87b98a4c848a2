"""Reading 'likelihood' (paper §3.5 and §4): the guider learns from the likelihood.

§3.5: "By focusing the G's training on maximizing the dataset's likelihood,
i.e., −log q_θ(x), without the influence of the KL loss, each element in P can
reflect the richness and importance of the corresponding channel feature map's
feature information." §4: a channel that carries more information gets a larger
weight and goes on to the next scale; the channels that are already closest to
the Gaussian prior are factored out.

The argsort has no gradient, so the likelihood is brought to the guider as a
target. For each image b and channel c of u_k, the NLL per dimension that the
fixed N(0, I) split prior would charge if c were factored out now,

    n_bc = mean_hw [u_bhwc^2 / 2] + log(2 pi) / 2          (ops.channel_nll)

(the channel's entropy plus its distance from the prior) is standardised over
the channels and turned into a distribution T_b = softmax((n_b - mean) / std).
The guider fits it, P_b -> T_b, by cross-entropy; u_k and T are held constant,
so this loss trains the guider and nothing else. The KL of Eq. 11 is taken with
P held constant, so it trains only the solver: Q follows the mean of P, and the
argsort sends the channels the prior explains worst (the information-rich ones)
to the next scale and factors out the ones it already explains.

`model.shuffle_statistic='divergence'` uses, instead of n_bc, the part of it the
channel's own Gaussian entropy does not explain, KL(N(m, v) || N(0, 1)) per
dimension (ops.channel_divergence): channels already close to the prior are
factored out, and narrow (low-entropy) ones go on as well as wide ones.

The target assumes the paper's fixed N(0, I) split prior (model.split_prior =
'standard'); with Glow's conditional prior it is the cost before that prior.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from eiw_jax.shuffle.base import SolverGuiderShuffle
from eiw_jax.shuffle.ops import STATISTICS, kl_divergence, soft_cross_entropy


def channel_target(u: jnp.ndarray, statistic: str = 'nll') -> jnp.ndarray:
  """[B, H, W, 4C] -> T [B, 4C]: softmax over channels of the standardised statistic
  (the NLL n_bc by default)."""
  nll = STATISTICS[statistic](u)
  mean = jnp.mean(nll, axis=-1, keepdims=True)
  std = jnp.std(nll, axis=-1, keepdims=True)
  return jax.nn.softmax((nll - mean) / (std + 1e-6), axis=-1)


class LikelihoodShuffle(SolverGuiderShuffle):
  """Solver + shuffler + guider; the guider fits the likelihood target T, the
  solver fits the guider through the KL."""
  statistic: str = 'nll'

  def penalties(self, u, scores):
    u = jax.lax.stop_gradient(u)
    p_logits = self.guider(u)
    fit = soft_cross_entropy(channel_target(u, self.statistic), p_logits)
    kl = kl_divergence(jax.lax.stop_gradient(p_logits), scores)
    return kl, fit
