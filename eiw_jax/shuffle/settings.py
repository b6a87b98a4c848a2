"""The Shuffle's settings (the model.shuffle_* keys), their allowed values and checks."""
from __future__ import annotations

import dataclasses
from typing import Tuple

from eiw_jax.errors import UserError
from eiw_jax.shuffle.nets import SOLVER_INPUTS
from eiw_jax.shuffle.ops import HALVES, UNITS
from eiw_jax.shuffle.statistics import STATISTICS

MODE_NAMES = ('likelihood', 'kl', 'oracle', 'random', 'fixed')


@dataclasses.dataclass(frozen=True)
class ShuffleSettings:
  """How every transition's Shuffle is built (the model.shuffle_* keys; see the README).

  mode: the reading ('likelihood', 'kl', 'oracle', 'random', 'fixed').
  unit: 'channel' (u_k's 4C channels) or 'map' (C pre-squeeze feature maps).
  halves: 'keep_order' (only the split is chosen) or 'sorted' (ops.unit_order).
  statistic: what 'likelihood' and 'oracle' rank by (statistics.py).
  permutations: 'fixed' only: one order of units per transition.
  """
  mode: str = 'likelihood'
  unit: str = 'channel'
  halves: str = 'keep_order'
  statistic: str = 'dataset_kl'
  reduction: int = 16
  guider_min_width: int = 8
  solver_layers: int = 2
  solver_input: str = 'normalized'
  kl_grad_to_guider: bool = True
  seed: int = 0
  refresh_every: int = 1
  permutations: Tuple[Tuple[int, ...], ...] = ()


# model.* config keys -> ShuffleSettings fields.
CONFIG_KEYS = {
    'shuffle_mode': 'mode',            # the reading (shuffle/__init__.py)
    'shuffle_unit': 'unit',            # u_k's channels, or whole pre-squeeze feature maps ('map')
    'shuffle_halves': 'halves',        # 'keep_order' (each half keeps its order) or 'sorted'
    'shuffle_statistic': 'statistic',  # likelihood/oracle: 'dataset_kl', 'nll', 'divergence'
    'shuffle_reduction': 'reduction',  # the guider's reduction ratio r
    'guider_min_width': 'guider_min_width',  # the guider's hidden width is max(4C // r, this)
    'solver_layers': 'solver_layers',  # L_S
    'solver_input': 'solver_input',    # the solver's constant input: 4C/4C ('normalized') or 4C
    'kl_grad_to_guider': 'kl_grad_to_guider',  # reading 'kl': False holds P constant in the KL
    'shuffle_seed': 'seed',            # reading 'random': the orders' seed
    'shuffle_refresh_every': 'refresh_every',  # the shuffler's order is refreshed every N steps
    'shuffle_permutations': 'permutations',    # reading 'fixed': one order of units per transition
}


def config_defaults() -> dict:
  """The model.* keys of the Shuffle with their defaults (the order refreshed every 100
  training steps: the split changes at most that often)."""
  out = {key: getattr(ShuffleSettings(), field) for key, field in CONFIG_KEYS.items()}
  out.update(shuffle_refresh_every=100, shuffle_permutations=[])
  return out


def from_config(m) -> ShuffleSettings:
  """ShuffleSettings from config.model (every key of CONFIG_KEYS present)."""
  values = {field: m[key] for key, field in CONFIG_KEYS.items()}
  values['permutations'] = permutations_from(values['permutations'])
  return ShuffleSettings(**values)


def permutations_from(value) -> Tuple[Tuple[int, ...], ...]:
  """model.shuffle_permutations as a tuple of tuples of ints (UserError if it is not
  a list of lists of integers)."""
  try:
    return tuple(tuple(_integer(i) for i in order) for order in value)
  except (TypeError, ValueError):
    raise UserError(f'model.shuffle_permutations must be a list of lists of integers (one '
                    f'order of units per transition), got {value!r}') from None


def _integer(value) -> int:
  if isinstance(value, bool) or int(value) != value:
    raise ValueError(value)
  return int(value)


def check_settings(s: ShuffleSettings, num_scales: int) -> None:
  """Refuses settings no Shuffle can be built from (UserError, one line)."""
  choices = dict(shuffle_mode=(s.mode, MODE_NAMES), shuffle_unit=(s.unit, tuple(UNITS)),
                 shuffle_halves=(s.halves, HALVES),
                 shuffle_statistic=(s.statistic, tuple(STATISTICS)),
                 solver_input=(s.solver_input, SOLVER_INPUTS))
  for key, (value, allowed) in choices.items():
    if value not in allowed:
      raise UserError(f"model.{key} must be one of {', '.join(allowed)}, got {value!r}; "
                      f'set config.model.{key}={allowed[0]}')
  for key, value, default in (('shuffle_refresh_every', s.refresh_every, 100),
                              ('guider_min_width', s.guider_min_width, 8)):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise UserError(f'model.{key} must be an integer >= 1, got {value!r}; '
                      f'set config.model.{key}={default}')
  if s.mode == 'fixed' and len(s.permutations) != num_scales - 1:
    raise UserError(f"shuffle_mode='fixed' needs one order of units per transition in "
                    f'model.shuffle_permutations ({num_scales - 1}), got {len(s.permutations)}; '
                    'e.g. config.model.shuffle_permutations=[[1, 0, 2, 3]]')
