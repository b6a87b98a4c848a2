"""What each transition's Shuffle does and why (paper §3.4-3.5): `shuffle_info`.

u_k = Squeeze(h_k) holds feature map c of h_k at its 2x2 sub-position (dy, dx) in
channel 4c + 2dy + dx (bijectors/squeeze.py), so channel j of u_k is map j // 4 at
sub-position divmod(j % 4, 2). The Shuffle orders units of u_k (a channel, or a
map's four channels with model.shuffle_unit='map'); the permutation in use is a
constant that a training apply refreshes from the live scores every
model.shuffle_refresh_every updates (shuffle/base.py), so between refreshes it can
lag behind them: `stale`.
"""
from __future__ import annotations

from typing import Any, List, Optional

import jax
import jax.numpy as jnp

from eiw_jax import checks
from eiw_jax.api import Variables, apply, latent_shapes
from eiw_jax.model import EIWFlow, rngs_for
from eiw_jax.shuffle import (factored_mask, transition_permutations, transition_scores,
                             unit_statistic)
from eiw_jax.shuffle.base import FIT_COLLECTION, INPUT_COLLECTION
from eiw_jax.shuffle.nets import Guider


def shuffle_info(model: EIWFlow, variables: Variables, images: Optional[jax.Array] = None,
                 rng: Optional[jax.Array] = None) -> List[dict[str, Any]]:
  """What each transition's Shuffle does: one dict per transition k = 1..K-1
  ([] for the vanilla flow).

  From the variables alone:
    perm: [4C] int32, the permutation the shuffler applies (û = u[..., perm]; the
      first 2C go on, the last 2C are factored out);
    factored: [4C] bool, True for the channels of u_k that are factored out;
    scores: [number of units], the scores behind `perm` (the units with the highest
      go on): the order as last refreshed, or the live scores if it is refreshed at
      every step; None for 'fixed';
    q: [number of units], the solver's live Q (sums to 1), for the readings with a
      solver, else None (a unit is a channel of u_k, or a map of four channels
      with model.shuffle_unit='map');
    live_perm: [4C] int32, the permutation the live scores (Q's logits, the
      oracle's statistics) give now;
    stale: bool scalar, True when `perm` differs from `live_perm`: the live scores
      rank the units otherwise than the order in use, until the next refresh.
  Given integer `images` [B, H, W, C] (dequantised with `rng`), also:
    statistic: [number of units], model.shuffle_statistic of u_k on this batch
      (averaged over it): what 'likelihood' (through the guider's target) and
      'oracle' rank by; the units with the lowest are those closest to N(0, 1);
    p: [B, number of units], the guider's P per image (rows sum to 1), for the
      readings with a guider, else None;
    kl: scalar, the transition's KL of Eq. 11 on this batch (before λ).
  """
  checks.check_variables(variables, 'shuffle_info')
  flow, settings = model.flow, model.flow.shuffle_settings
  params = variables['params'].get('flow', {})
  consts = variables.get('consts', {}).get('flow', {})
  channels = [2 * shape[-1] for shape in latent_shapes(model, variables)[:-1]]  # 4C = 2 |z_k|
  used = transition_permutations(flow, params, channels, consts)
  used_scores = transition_scores(flow, params, channels, consts)
  live = transition_scores(flow, params, channels)
  live_perm = transition_permutations(flow, params, channels)
  solver = settings.mode in ('kl', 'likelihood')
  out = []
  for k, perm in enumerate(used):
    out.append(dict(
        perm=perm, factored=factored_mask(perm),
        scores=None if settings.mode == 'fixed' else used_scores[k],
        q=jax.nn.softmax(live[k]) if solver else None,
        live_perm=live_perm[k], stale=jnp.any(perm != live_perm[k])))
  if images is not None and out:
    checks.check_images(model, images, 'shuffle_info')
    rng = checks.check_rng(rng, 'shuffle_info')
    (_, kls), state = apply(
        model, variables, 'shuffle_info', images, rngs=rngs_for(rng),
        mutable=['intermediates', FIT_COLLECTION, INPUT_COLLECTION],
        capture_intermediates=lambda module, method: isinstance(module, Guider))
    captured = state.get('intermediates', {}).get('flow', {})
    inputs = state[INPUT_COLLECTION]['flow']
    for k, info in enumerate(out):
      logits = captured.get(f'shuffle_{k}', {}).get('guider', {}).get('__call__')
      u = inputs[f'shuffle_{k}']['u'][0]  # [B, H_k/2, W_k/2, 4C]
      info.update(statistic=jnp.mean(unit_statistic(u, settings.statistic, settings.unit), 0),
                  p=None if logits is None else jax.nn.softmax(logits[0], axis=-1), kl=kls[k])
  return out
