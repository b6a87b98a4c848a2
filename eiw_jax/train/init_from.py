"""`train.init_from`: a new run that starts from another run's flow.

The use it is made for: continue a vanilla run (one of ours, or DenseFlow's weights
converted by `python -m eiw_jax.convert.denseflow`) with the Shuffle on. Every
parameter and constant the two models share is copied from the source's newest
checkpoint (its EMA weights where it kept them: what its evaluation used); what only
the new model has must be the Shuffle's and keeps its fresh init, which starts at
the identity order, so the new run's first evaluation is the source's bits/dim.
The optimiser starts anew and the step count at 0. A workdir that already holds a
checkpoint resumes from it and ignores `init_from`.
"""
from __future__ import annotations

import os

import jax
import numpy as np

from eiw_jax.errors import UserError
from eiw_jax.train import checkpoint, runs

# What must agree between the runs besides the parameters' shapes: the data the
# flow models (the parameters alone do not pin the number of bits).
_DATA_KEYS = ('image_size', 'channels', 'num_bits')


def _path_name(path) -> str:
  return '/'.join(str(getattr(p, 'key', p)) for p in path)


def _leaves(tree) -> dict:
  return {_path_name(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _is_shuffle(name: str) -> bool:
  return any(part.startswith('shuffle_') for part in name.split('/'))


def source_config(config, workdir: str):
  """The source run's saved config, checked against `config` (UserError, one line).
  Call it before anything of the new run is written."""
  source = os.path.abspath(config.train.init_from)
  if os.path.abspath(workdir) == source:
    raise UserError(f'train.init_from is the run\'s own workdir {workdir}; name another run '
                    '(or drop --config.train.init_from to resume this one)')
  if not checkpoint.has_checkpoint(source):
    raise UserError(f'train.init_from={config.train.init_from}: no checkpoint there; name '
                    'the workdir of a run that train.py or the DenseFlow converter wrote')
  saved = runs.saved_config(source)
  for key in _DATA_KEYS:
    if saved.data[key] != config.data[key]:
      raise UserError(f'train.init_from: the source run has data.{key}={saved.data[key]}, '
                      f'this one {config.data[key]}; start from a run on the same images')
  return saved


def check_structure(target, source, name: str) -> None:
  """Refuses a source whose flow is not the new model's (leaves of abstract or real
  variables, {'params': ..., 'consts': ...}): one line naming the first mismatch."""
  for collection in ('params', 'consts'):
    new, old = _leaves(target.get(collection, {})), _leaves(source.get(collection, {}))
    for key in sorted(new):
      if key not in old and not _is_shuffle(key):
        raise UserError(f'train.init_from: {collection} {key} of this model is not in '
                        f'{name}; start from a run of the same backbone and sizes')
      if key in old and np.shape(old[key]) != np.shape(new[key]):
        raise UserError(f'train.init_from: {collection} {key} has shape '
                        f'{np.shape(old[key])} in {name}, {np.shape(new[key])} here; '
                        'start from a run of the same backbone and sizes')
    extra = sorted(k for k in old if k not in new and not _is_shuffle(k))
    if extra:
      raise UserError(f'train.init_from: {name} has {collection} {extra[0]} that this model '
                      'lacks; start from a run of the same backbone and sizes')


def graft(fresh: dict, source: dict) -> dict:
  """`fresh` variables with every leaf that `source` also has replaced by the source's
  (cast to the fresh leaf's dtype)."""
  def pick(collection):
    old = _leaves(source.get(collection, {}))
    return jax.tree_util.tree_map_with_path(
        lambda p, x: (np.asarray(old[_path_name(p)], x.dtype) if _path_name(p) in old else x),
        fresh[collection])
  return {collection: pick(collection) for collection in ('params', 'consts')}


def _check_dropped_orders(target, source, name: str) -> None:
  """A source's Shuffle that the new model lacks must never have committed an order
  (its `order` scores all equal: the identity, shuffle/base.py)."""
  new, old = _leaves(target['consts']), _leaves(source.get('consts', {}))
  for key, scores in old.items():
    if (_is_shuffle(key) and key.endswith('/order') and key not in new
        and np.ptp(np.asarray(scores)) > 0):
      raise UserError(f'train.init_from: {name}\'s Shuffle has moved channels ({key}), which '
                      'a model without the Shuffle cannot follow; keep model.shuffle on')


def load(trainer, state):
  """`state` (a fresh init) with the source run's flow copied in, the optimiser and
  the EMA restarted from the result; placed like `state`."""
  source = trainer.config.train.init_from
  config = runs.saved_config(source)
  _, variables, step = runs.load_for_eval(config, source)
  variables = jax.device_get(variables)
  fresh = jax.device_get(state.variables(use_ema=False))
  check_structure(fresh, variables, source)
  _check_dropped_orders(fresh, variables, source)
  grafted = graft(fresh, variables)
  params = grafted['params']
  new = state.replace(params=params, consts=grafted['consts'],
                      opt_state=trainer.optimizer.init(params),
                      ema_params=params if trainer.use_ema else None)
  new = jax.device_put(new, trainer.replicated)
  copied = _leaves(variables['params'])
  shuffle = sum(_is_shuffle(k) and k not in copied for k in _leaves(params))
  return new, (f'initialised from {source} (its step {step}): its flow copied, '
               f'{shuffle} Shuffle parameters fresh, the optimiser new')
