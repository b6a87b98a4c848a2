"""The run config: one schema for configs/*.py, train.py and eval.py.

Five groups, each owned by the code it configures: `model` (builder.model_config,
with the Shuffle's keys from shuffle/settings.py and each backbone's from
backbones/), `data` (data.defaults), `optim` (train/optimizer.py), `train`
(train/settings.py) and `eval` (evaluation.defaults). Every key can be overridden
on the command line (`--config.optim.lr=3e-4`); an unknown key is an error.

`validate_run` checks a training config once, where it enters (train.py); `upgrade`
brings a config saved by an older version to today's keys, in the one place a
saved config.json is read: a key it lacks takes the value that stood for its
absence then (`LEGACY_VALUES`: the behaviour of that version), else today's default.
"""
from __future__ import annotations

import difflib

import ml_collections

from eiw_jax import data, evaluation
from eiw_jax.builder import model_config, validate
from eiw_jax.errors import UserError, as_flags
from eiw_jax.train import optimizer, settings

# Keys added after configs were first saved, whose absence (a config.json written
# before they existed) means the behaviour of that time, not today's default.
LEGACY_VALUES = {
    'model.shuffle_mode': 'kl', 'model.solver_input': 'count',
    'model.shuffle_refresh_every': 1, 'model.shuffle_statistic': 'nll',
    'model.shuffle_unit': 'channel', 'model.shuffle_halves': 'sorted',
    'model.guider_min_width': 1, 'model.denseflow.norm': 'group',
    'optim.shuffle_optimizer': 'shared',
}


def base_config(*, name: str, image_size: int, channels: int, batch_size: int,
                train_steps: int, **model) -> ml_collections.ConfigDict:
  """A full config for dataset `name` with the paper's training defaults; `model`
  overrides model keys (builder.model_config)."""
  return ml_collections.ConfigDict(dict(
      model=model_config(**model),
      data=data.defaults(name, image_size, channels, batch_size),
      optim=optimizer.defaults(),
      train=settings.defaults(train_steps),
      eval=evaluation.defaults()))


def _any_config(backbone: str = 'glow') -> ml_collections.ConfigDict:
  return base_config(name='', image_size=1, channels=1, batch_size=1, train_steps=1,
                     backbone=backbone)


def leaf_keys(cfg, prefix=''):
  """Dotted key paths; free-form groups (empty in the defaults) count as leaves."""
  out = set()
  for key, value in cfg.items():
    if isinstance(value, ml_collections.ConfigDict) and value:
      out |= leaf_keys(value, f'{prefix}{key}.')
    else:
      out.add(f'{prefix}{key}')
  return out


def check_keys(cfg) -> None:
  """Refuses keys the defaults do not have (a typo would otherwise be ignored)."""
  known = leaf_keys(_any_config())
  groups = {k.rsplit('.', 1)[0] for k in known if '.' in k}
  for key in sorted(leaf_keys(cfg)):
    if key in known or any(key.startswith(f'{k}.') for k in known):
      continue
    if key in groups:
      continue  # an emptied group: the model's own check names what it lacks
    near = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f'did you mean {near[0]}?' if near else 'see docs/USAGE.md for the keys'
    raise UserError(f'unknown config key {key}; {hint}')


def validate_run(cfg) -> None:
  """Checks the keys and the model/data/optim/train values of a training config
  (UserError, one line, naming the command-line flag that fixes it)."""
  try:
    _validate_run(cfg)
  except UserError as e:
    raise UserError(as_flags(str(e))) from None


def _validate_run(cfg) -> None:
  check_keys(cfg)
  for group in ('model', 'data', 'optim', 'train', 'eval'):
    if group not in cfg:
      raise UserError(f'the config has no {group!r} group; start from a file in configs/')
  validate(cfg)  # the model's values first: the Shuffle's rates depend on them
  data.check(cfg.data)
  settings.check(cfg)


def upgrade(saved) -> ml_collections.ConfigDict:
  """A saved config (a dict or ConfigDict, as config.json holds it) with every key
  of today's schema: a missing key takes LEGACY_VALUES' value, else today's default.
  Nothing present is changed."""
  saved = saved.to_dict() if hasattr(saved, 'to_dict') else dict(saved)
  backbone = saved.get('model', {}).get('backbone', 'glow')
  return ml_collections.ConfigDict(_fill(saved, _any_config(backbone).to_dict(), ''))


def _fill(saved: dict, defaults: dict, prefix: str) -> dict:
  out = dict(saved)
  for key, default in defaults.items():
    name = f'{prefix}{key}'
    if key not in out:
      out[key] = LEGACY_VALUES.get(name, default)
    elif isinstance(default, dict) and default and isinstance(out[key], dict):
      out[key] = _fill(out[key], default, f'{name}.')
  return out
