"""Which parameters are the Shuffle's, for an optimiser that treats them apart
(`optax.multi_transform`; eiw_jax.train.optimizer's recipe)."""
from __future__ import annotations

import jax

LABELS = ('flow', 'solver', 'guider', 'oracle')


def _label(path, unused_leaf) -> str:
  names = [getattr(p, 'key', str(p)) for p in path]
  if any(n.startswith('shuffle_') for n in names):
    for part, label in (('solver', 'solver'), ('guider', 'guider'), ('stats', 'oracle')):
      if part in names:
        return label
  return 'flow'


def param_labels(params):
  """A tree like `params` of 'solver', 'guider' and 'oracle' (the oracle's statistics)
  for the Shuffle's parameters and 'flow' for every other one."""
  return jax.tree_util.tree_map_with_path(_label, params)
