"""Loading what `train.py` wrote: its saved config and its newest readable
checkpoint, read-only (eval.py, `eiw_jax.load_run`, experiments).
"""
from __future__ import annotations

import json
import os
from typing import Optional

import ml_collections

from eiw_jax import checkpoint, config_lib
from eiw_jax.builder import LEGACY_VALUES
from eiw_jax.checkpoint import Checkpointer
from eiw_jax.errors import UserError
from eiw_jax.train_lib import Trainer


def saved_config(workdir: Optional[str]):
  """The config a run saved in <workdir>/config.json (for eval without --config)."""
  path = os.path.join(workdir or '', 'config.json')
  if not workdir or not os.path.exists(path):
    raise UserError(f'no config given and none saved in {workdir!r}; pass --config=configs/<dataset>.py')
  try:
    with open(path) as f:
      config = ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError, TypeError, AttributeError) as e:  # unreadable, not JSON, not a dict
    raise UserError(f'{path} is unreadable ({" ".join(str(e).split())}); pass '
                    '--config=configs/<dataset>.py with the values the run used') from e
  # Optimiser keys added since the run was saved take today's defaults (they do not
  # change the state's structure); those whose absence means old behaviour stay absent.
  defaults = config_lib.base_config(name='', image_size=1, channels=1, batch_size=1,
                                    train_steps=1).optim
  if 'optim' in config:
    for key, value in defaults.items():
      if key not in config.optim and f'optim.{key}' not in LEGACY_VALUES:
        config.optim[key] = value
  return config


def load_for_eval(config, workdir: str):
  """(model, variables, step) from the newest readable checkpoint in `workdir`.

  Read-only: writes, moves and deletes nothing under `workdir` (a trainer may be
  saving there at the same time; its unfinished save is skipped, not removed).
  """
  trainer = Trainer(config, workdir)
  restored = None
  if checkpoint.has_checkpoint(workdir):
    ckpt = Checkpointer(workdir, max_to_keep=None, config=config, read_only=True)
    try:
      restored = ckpt.restore(trainer.abstract_state(), adapters=trainer.restore_adapters())
    finally:
      ckpt.close()
  if restored is None:
    raise UserError(f'no checkpoint in {workdir}; train first: python train.py '
                    f'--config=<config> --workdir={workdir}')
  state, step = restored
  return trainer.model, state.variables(), step


def load_run(workdir: str, config: Optional[object] = None):
  """(model, variables, config) of the run in `workdir`: the config it saved (or
  `config`, if given) and the newest readable checkpoint's variables. Read-only,
  as `load_for_eval`: safe beside a running trainer.
  """
  config = saved_config(workdir) if config is None else config
  model, variables, _ = load_for_eval(config, workdir)
  return model, variables, config
