"""Reading 'kl': Algorithm 1 read literally (paper §3.5, Eq. 12).

The gradient of the whole objective, NLL + λ KL(P || Q), reaches every
parameter. The permutation is a hard argsort, so the NLL reaches neither the
solver nor the guider: they learn only to agree with each other, every P = Q is
a minimum, and which units go on is arbitrary (no direction to check). With
λ = 0 nothing moves and the permutation stays the identity. (The flow before the
transition does receive λ·KL's gradient through the guider's input u_k.)

`kl_grad_to_guider=False` holds P constant in the KL (stop_gradient), so the KL
trains the solver only and the guider keeps its initial weights.
"""
from __future__ import annotations

import jax

from eiw_jax.shuffle.ops import kl_divergence
from eiw_jax.shuffle.solver_guider import SolverGuiderShuffle


class KLShuffle(SolverGuiderShuffle):
  """Solver + shuffler + guider; the KL is the only signal either network gets."""

  def penalties(self, u, scores):
    p_logits = self.guider(u)
    if not self.settings.kl_grad_to_guider:
      p_logits = jax.lax.stop_gradient(p_logits)
    return kl_divergence(p_logits, scores), None
