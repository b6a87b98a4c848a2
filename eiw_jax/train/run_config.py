"""Comparing a run's saved config with the one it is resumed or evaluated under.

A difference in a key that fixes the state's structure (`model.*`,
`data.image_size`, `data.channels`, `data.num_bits`, `optim.shuffle_optimizer`)
is refused in one line before anything is written (`structure_difference`); other
differences (a longer run, another learning rate) are accepted and named in one
line (`changes`), and reach config.json with the next save. `SavedConfig` holds
a workdir's config.json for the checkpointer."""
from __future__ import annotations

import json
import os
from typing import Optional

import jax
import numpy as np

from eiw_jax.errors import UserError
from eiw_jax.train import config as config_lib
from eiw_jax.train import files, messages

# Config keys that fix the state's structure (everything under `model` too).
_STRUCTURE_KEYS = ('data.image_size', 'data.channels', 'data.num_bits',
                   'optim.shuffle_optimizer')


def config_to_json(config) -> str:
  if hasattr(config, 'to_dict'):  # ml_collections.ConfigDict
    config = config.to_dict()
  return json.dumps(config, indent=2, sort_keys=True, default=_json_default) + '\n'


def _json_default(value):
  if isinstance(value, (np.generic, np.ndarray)):
    return value.tolist()
  return str(value)


def _flatten(tree: dict, prefix: str = '') -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      out.update(_flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


# Model keys that change the objective or how it is computed, not the state.
_FREE_MODEL_KEYS = frozenset({'model.kl_weight', 'model.kl_grad_to_guider', 'model.kl_units',
                              'model.invertible_grad', 'model.remat', 'model.compute_dtype'})


# The Shuffle's keys: they change no variable between two models whose Shuffles
# have none (the vanilla flow and the readings 'random' and 'fixed'), so a vanilla
# run continues under a fixed order (experiments/shuffle_paired.py) and back.
_ORDER_ONLY_MODES = ('random', 'fixed')


def _shuffle_key(key: str) -> bool:
  return key.startswith('model.shuffle') or key in (
      'model.guider_min_width', 'model.solver_layers', 'model.solver_input')


def _parameter_free_shuffle(flat: dict) -> bool:
  return not flat['model.shuffle'] or flat['model.shuffle_mode'] in _ORDER_ONLY_MODES


def structure_difference(saved: dict, new: dict):
  """First (key, saved, new) that differs among structural keys, or None.

  Both are brought to today's keys first (config.upgrade): a key the saved config
  lacks stands for the behaviour of the version that wrote it. The Shuffle's keys
  are free between two models whose Shuffles have no variables.
  """
  saved = _flatten(config_lib.upgrade(saved).to_dict())
  new = _flatten(config_lib.upgrade(new).to_dict())
  free_order = _parameter_free_shuffle(saved) and _parameter_free_shuffle(new)
  structural = lambda k: (k == 'model' or k.startswith('model.') or (
      k in _STRUCTURE_KEYS)) and k not in _FREE_MODEL_KEYS and not (
          free_order and _shuffle_key(k))
  for key in sorted(k for k in saved.keys() | new.keys() if structural(k)):
    missing = object()
    old_value, new_value = saved.get(key, missing), new.get(key, missing)
    if old_value != new_value:
      show = lambda v: '<unset>' if v is missing else json.dumps(v)
      return key, show(old_value), show(new_value)
  return None


def changes(saved: dict, new: dict, limit: int = 6) -> str:
  """'optim.lr 0.001 -> 0.0005, ...' for the non-structural keys that differ."""
  saved, new = _flatten(saved), _flatten(new)
  keys = sorted(k for k in saved.keys() & new.keys() if saved[k] != new[k]
                and not k.startswith('eval.') and k not in _INVOCATION_KEYS)
  parts = [f'{k} {json.dumps(saved[k])} -> {json.dumps(new[k])}' for k in keys[:limit]]
  if len(keys) > limit:
    parts.append(f'and {len(keys) - limit} more')
  return ', '.join(parts)


_CONFIG_FIX = "use a new --workdir, or pass the saved config's values"
# Keys that say how this invocation runs, not what the run is: never named as changes.
_INVOCATION_KEYS = ('train.restart',)


class SavedConfig:
  """`<workdir>/config.json` against the config a run is resumed under.

  Read and compared when made (a structural difference is a UserError before
  anything is written); `accept` names the other differences once a checkpoint
  was restored; `write` replaces the file whole (train/files.py).
  """

  def __init__(self, workdir: str, config, has_checkpoints: bool):
    self._workdir = workdir
    self.path = os.path.join(workdir, 'config.json')
    self.text = config_to_json(config)
    self.saved_text = self._read(has_checkpoints)

  def _read(self, has_checkpoints: bool) -> Optional[str]:
    if not os.path.lexists(self.path):
      return None
    try:
      with open(self.path) as f:
        text = f.read()
    except (OSError, UnicodeDecodeError) as e:
      raise UserError(f'{self.path} is unreadable ({_one_line(e)}); remove or fix it, or use '
                      'a new --workdir') from e
    if not has_checkpoints:
      return text  # Nothing saved to be incompatible with.
    try:
      saved = json.loads(text)
    except json.JSONDecodeError as e:
      raise UserError(f'{self.path} is not valid JSON ({e}); {_CONFIG_FIX}') from e
    diff = structure_difference(saved, json.loads(self.text))
    if diff is not None:
      key, old, new = diff
      raise UserError(f'{self._workdir} holds checkpoints of a model with {key}={old}, but the '
                      f'config has {key}={new}; {_CONFIG_FIX}')
    return text

  @property
  def stale(self) -> bool:
    return self.text != self.saved_text

  def accept(self, step: int) -> None:
    """After `step` was restored: names the settings that changed since it was saved."""
    if self.saved_text is None:
      return
    found = changes(json.loads(self.saved_text), json.loads(self.text))
    if found:
      messages.note(f'step {step} restored under changed settings: {found}')

  def write(self) -> None:
    if jax.process_index() == 0:
      os.makedirs(self._workdir, exist_ok=True)
      files.write_text(self.path, self.text)
    self.saved_text = self.text


def _one_line(error: Exception) -> str:
  return f'{type(error).__name__}: {" ".join(str(error).split())}'
