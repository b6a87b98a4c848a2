"""The Shuffle's state read from variables alone (no data): scores, the order the
shuffler uses, and how the split changed between two versions."""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import jax
import jax.numpy as jnp

from eiw_jax.shuffle.ops import UNITS, factored_mask


def _channels(params: dict, unit: str) -> Optional[int]:
  """4C from a transition's parameters (None for a reading without any)."""
  if 'stats' in params:
    units = params['stats'].shape[-1]
  elif 'solver' in params:
    units = params['solver']['out']['bias'].shape[-1]
  else:
    return None
  return int(units) * UNITS[unit]


def _shuffles(flow, flow_params: dict, num_channels=None, refresh_every=None):
  """(k, module, params) per transition; module None where the channel count is
  unknown (a reading without parameters and no `num_channels`)."""
  from eiw_jax.shuffle import make_shuffle  # pylint: disable=g-import-not-at-top
  settings = flow.shuffle_settings
  if refresh_every is not None:
    settings = dataclasses.replace(settings, refresh_every=refresh_every)
  for k in range(flow.num_scales - 1 if flow.shuffle else 0):
    params = flow_params.get(f'shuffle_{k}', {})
    n = num_channels[k] if num_channels is not None else _channels(params, settings.unit)
    module = None if n is None else make_shuffle(settings, n, transition=k)
    yield k, module, params


def _apply(flow, flow_params, method, num_channels=None, flow_consts=None):
  out = []
  committed = flow_consts is not None
  for k, module, params in _shuffles(flow, flow_params, num_channels,
                                     None if committed else 1):
    if module is None:
      out.append(None)
      continue
    variables = {'params': params} if params else {}
    consts = (flow_consts or {}).get(f'shuffle_{k}')
    if committed and consts:
      variables['consts'] = consts
    out.append(module.apply(variables, method=method))
  return out


def transition_scores(flow, flow_params: dict, num_channels: Optional[Sequence[int]] = None,
                      flow_consts: Optional[dict] = None) -> List[Optional[jnp.ndarray]]:
  """Per transition, the scores [number of units] behind the order (the units with
  the highest go on); [] for the vanilla flow. With `flow_consts` (the 'consts' of
  the flow) those the shuffler uses; without, the live scores (Q's logits). A
  reading without parameters gives None unless `num_channels` (4C per transition)
  is given."""
  return _apply(flow, flow_params, 'scores', num_channels, flow_consts)


def transition_permutations(flow, flow_params: dict,
                            num_channels: Optional[Sequence[int]] = None,
                            flow_consts: Optional[dict] = None) -> List[Optional[jnp.ndarray]]:
  """Per transition, the shuffler's permutation of u_k's channels ([4C] int32:
  û_k = u_k[..., perm], the first half goes on). Arguments as `transition_scores`:
  with `flow_consts` the permutation in use, without it the one the live scores give."""
  return _apply(flow, flow_params, 'permutation', num_channels, flow_consts)


def commit_live_orders(flow, flow_params: dict, flow_consts: dict) -> dict:
  """The flow's consts with every committed order replaced by the live scores now (as
  a training apply does every `refresh_every` updates; shuffle/base.py)."""
  if not flow.shuffle:
    return flow_consts
  new = dict(flow_consts)
  for k, scores in enumerate(transition_scores(flow, flow_params)):
    name = f'shuffle_{k}'
    if scores is not None and 'order' in flow_consts.get(name, {}):
      new[name] = {**flow_consts[name], 'order': scores}
  return new


def split_changes(flow, old: dict, new: dict, live=None) -> dict:
  """How the permutation in use changed between two versions of the flow's
  variables ({'params', 'consts'}), per transition k = 1..K-1:

    split_changed_k: 1 if the set of channels factored out differs, else 0;
    order_changed_k: 1 if the set is the same but the order of u_k's channels
      within a half differs (the next scale sees its inputs reordered), else 0;
    q_entropy_k: the entropy of the live Q (readings with a solver).

  `live`: transition_scores(flow, new['params']), if the caller has them already.
  """
  out = {}
  before = transition_permutations(flow, old['params'], flow_consts=old.get('consts', {}))
  after = transition_permutations(flow, new['params'], flow_consts=new.get('consts', {}))
  for k, (a, b) in enumerate(zip(before, after)):
    if a is None:
      continue
    set_changed = jnp.any(factored_mask(a) != factored_mask(b))
    out[f'split_changed_{k + 1}'] = set_changed.astype(jnp.int32)
    out[f'order_changed_{k + 1}'] = (jnp.any(a != b) & ~set_changed).astype(jnp.int32)
  if flow.shuffle_settings.mode in ('kl', 'likelihood'):
    live = transition_scores(flow, new['params']) if live is None else live
    for k, scores in enumerate(live):
      log_q = jax.nn.log_softmax(scores)
      out[f'q_entropy_{k + 1}'] = -jnp.sum(jnp.exp(log_q) * log_q)
  return out
