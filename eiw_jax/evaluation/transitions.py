"""The transition tensors u_k and the Shuffle's channel order, for entropy and Fig. 12.

At transition k (flow.py), u_k = Squeeze(h_k) with h_k the output of scale k's
flow steps. Before the Shuffle, x_k / z_k are the first / second half of u_k's
channels; after it, of û_k = u_k[..., perm] with perm the shuffler's permutation
(paper §3.4, §8.2; shuffle.transition_permutations).

u_k is recovered without touching flow.py: the model is applied to the data
(its own dequantizer, as in training) with flax `capture_intermediates`
restricted to the outputs of the top-level scale modules `flow/scale_k`, and
squeezed here. A `self.sow('intermediates', f'u_{k}', u)` in MultiScaleFlow
would make this walk unnecessary.
"""
from __future__ import annotations

import functools
from typing import List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from eiw_jax.bijectors import squeeze
from eiw_jax.model import rngs_for
from eiw_jax.shuffle import transition_permutations, transition_scores


def _is_scale_output(module, method_name: str) -> bool:
  path = module.path
  return (method_name == '__call__' and len(path) == 2 and path[0] == 'flow'
          and path[1].startswith('scale_'))


@functools.partial(jax.jit, static_argnums=0)
def transition_tensors(model, variables, images, rng) -> List[jnp.ndarray]:
  """Integer images [B, H, W, C] -> [u_1 .. u_{K-1}], each [B, H_k, W_k, 4C_k]."""
  _, state = model.apply(variables, images, rngs=rngs_for(rng),
                         capture_intermediates=_is_scale_output, mutable=['intermediates'])
  scales = state['intermediates']['flow']
  out = []
  for k in range(model.flow.num_scales - 1):
    h = scales[f'scale_{k}']['__call__'][0][0]  # (h, logdet) of the scale
    out.append(squeeze(h))
  return out


def channel_orders(model, variables, num_channels) -> Optional[List[Tuple[np.ndarray, np.ndarray]]]:
  """Per transition (weights [4C], perm [4C]) as the flow uses them; None for the
  vanilla model. perm is the shuffler's permutation; the weights sum to 1 and rank
  the channels as the scores in use do (Q for the readings with a solver, softmax
  of the scores for the others; with map units a map's weight is shared by its
  four channels, each a quarter of it)."""
  if not model.flow.shuffle:
    return None
  flow, params = model.flow, variables['params']['flow']
  consts = variables.get('consts', {}).get('flow', {})
  scores = transition_scores(flow, params, num_channels, flow_consts=consts)
  perms = transition_permutations(flow, params, num_channels, flow_consts=consts)
  out = []
  for s, perm in zip(scores, perms):
    weights = np.asarray(jax.nn.softmax(s))
    size = len(perm) // len(weights)
    out.append((np.repeat(weights / size, size), np.asarray(perm)))
  return out
