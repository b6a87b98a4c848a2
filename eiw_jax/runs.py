"""Loading what `train.py` wrote, for code that imports eiw_jax.

`eiw_jax.load_run(workdir)` sits above the training stack: it reads the run's
config.json and its newest readable orbax checkpoint.
"""
from __future__ import annotations

from typing import Optional

from eiw_jax import train_lib


def load_run(workdir: str, config: Optional[object] = None):
  """(model, variables, config) of the run in `workdir`: the config it saved (or
  `config`, if given) and the newest readable checkpoint's variables.

  The workdir is opened read-only (nothing in it is written or cleaned up), so
  this is safe beside a running trainer.
  """
  config = train_lib.saved_config(workdir) if config is None else config
  model, variables, _ = train_lib.load_for_eval(config, workdir)
  return model, variables, config
