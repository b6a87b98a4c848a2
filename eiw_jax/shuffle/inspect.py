"""The Shuffle's state read from variables alone (no data): scores, the order the
shuffler uses and its refresh, and how the factored-out set changed."""
from __future__ import annotations

from typing import List, Optional, Sequence

import jax
import jax.numpy as jnp

from eiw_jax.shuffle.ops import channel_order, factored_mask


def _channels(params: dict) -> Optional[int]:
  if 'stats' in params:
    return int(params['stats'].shape[-1])
  if 'solver' in params:
    return int(params['solver']['out']['bias'].shape[-1])
  return None


def _shuffles(flow, flow_params: dict, num_channels=None, refresh_every=None):
  """(k, module, params) per transition; module None where the channel count is
  unknown (a reading without parameters and no `num_channels`)."""
  from eiw_jax.shuffle import make_shuffle  # pylint: disable=g-import-not-at-top
  for k in range(flow.num_scales - 1 if flow.shuffle else 0):
    params = flow_params.get(f'shuffle_{k}', {})
    n = num_channels[k] if num_channels is not None else _channels(params)
    module = None if n is None else make_shuffle(
        flow.shuffle_mode, n, transition=k, reduction=flow.shuffle_reduction,
        solver_layers=flow.solver_layers, solver_input=flow.solver_input, seed=flow.shuffle_seed,
        refresh_every=flow.shuffle_refresh_every if refresh_every is None else refresh_every,
        statistic=flow.shuffle_statistic)
    yield k, module, params


def transition_scores(flow, flow_params: dict, num_channels: Optional[Sequence[int]] = None,
                      flow_consts: Optional[dict] = None) -> List[Optional[jnp.ndarray]]:
  """Per transition, the scores [4C] whose stable descending argsort is the
  permutation; [] for the vanilla flow. With `flow_consts` (the 'consts' of the
  flow) the order the shuffler uses; without, the live scores (Q's logits). A
  reading without parameters ('random') gives None unless `num_channels` is given.
  """
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
    out.append(module.apply(variables, method='scores'))
  return out


def refresh_orders(flow, flow_params: dict, flow_consts: dict, step, live=None) -> dict:
  """The flow's consts with each committed order replaced by the live scores when
  `step` (the number of updates done) is a multiple of flow.shuffle_refresh_every.
  `live`: transition_scores(flow, flow_params), if the caller has them already."""
  if not flow.shuffle or flow.shuffle_refresh_every <= 1:
    return flow_consts
  live = transition_scores(flow, flow_params) if live is None else live
  new = dict(flow_consts)
  due = step % flow.shuffle_refresh_every == 0
  for k, scores in enumerate(live):
    name = f'shuffle_{k}'
    if scores is None or 'order' not in flow_consts.get(name, {}):
      continue
    old = flow_consts[name]['order']
    new[name] = {**flow_consts[name], 'order': jnp.where(due, scores, old)}
  return new


def split_changes(flow, old: dict, new: dict, live=None) -> dict:
  """{'split_changed_k': 1 if the factored-out set of transition k in use differs
  between two variable versions ({'params', 'consts'} of the flow), else 0} and
  {'q_entropy_k': entropy of the live Q} (readings with a solver), k = 1..K-1.
  `live`: transition_scores(flow, new['params']), if the caller has them already."""
  out = {}
  before = transition_scores(flow, old['params'], flow_consts=old.get('consts', {}))
  after = transition_scores(flow, new['params'], flow_consts=new.get('consts', {}))
  live = transition_scores(flow, new['params']) if live is None else live
  for k, (a, b) in enumerate(zip(before, after)):
    if a is None:
      continue
    changed = jnp.any(factored_mask(channel_order(a)) != factored_mask(channel_order(b)))
    out[f'split_changed_{k + 1}'] = changed.astype(jnp.int32)
    if flow.shuffle_mode in ('kl', 'likelihood'):
      log_q = jax.nn.log_softmax(live[k])
      out[f'q_entropy_{k + 1}'] = -jnp.sum(jnp.exp(log_q) * log_q)
  return out
