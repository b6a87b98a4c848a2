"""Loading what `train.py` wrote: its saved config and its newest readable
checkpoint, read-only (eval.py, `eiw_jax.load_run`, experiments).
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional, Tuple


from eiw_jax.train import checkpoint
from eiw_jax.train import config as config_lib
from eiw_jax.train.checkpoint import Checkpointer
from eiw_jax.errors import UserError
from eiw_jax.model import EIWFlow
from eiw_jax.train.trainer import Trainer


def saved_config(workdir: Optional[str]):
  """The config a run saved in <workdir>/config.json (for eval without --config)."""
  path = os.path.join(workdir or '', 'config.json')
  if not workdir or not os.path.exists(path):
    raise UserError(f'no config given and none saved in {workdir!r}; pass --config=configs/<dataset>.py')
  try:
    with open(path) as f:
      saved = json.load(f)
    return config_lib.upgrade(saved)  # today's keys, the run's meaning
  except (OSError, ValueError, TypeError, AttributeError) as e:  # unreadable, not JSON, not a dict
    raise UserError(f'{path} is unreadable ({" ".join(str(e).split())}); pass '
                    '--config=configs/<dataset>.py with the values the run used') from e


def load_for_eval(config, workdir: str):
  """(model, variables, step) from the newest readable checkpoint in `workdir`.

  Read-only: writes, moves and deletes nothing under `workdir` (a trainer may be
  saving there at the same time; its unfinished save is skipped, not removed).
  """
  trainer = Trainer(config)
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


def load_run(workdir: str, config: Optional[Any] = None) -> Tuple[EIWFlow, dict, Any]:
  """(model, variables, config) of the run in `workdir`: the config it saved (or
  `config`, if given) and the newest readable checkpoint's variables. Read-only,
  as `load_for_eval`: safe beside a running trainer.
  """
  config = saved_config(workdir) if config is None else config
  model, variables, _ = load_for_eval(config, workdir)
  return model, variables, config
