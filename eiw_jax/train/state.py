"""The training state and its data-dependent initialisation."""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

from eiw_jax import api
from eiw_jax.model import EIWFlow


@flax.struct.dataclass
class TrainState:
  step: jax.Array              # int32 [], number of batches consumed
  params: Any
  consts: Any                  # non-trainable (LU permutation and signs, BatchNorm averages)
  opt_state: Any
  ema_params: Any              # EMA of params, or None when off
  rng: jax.Array               # typed PRNG key; step keys are fold_in(rng, step)
  nonfinite_streak: jax.Array  # int32 [], non-finite steps in a row
  nonfinite_total: jax.Array   # int32 [], non-finite steps in all

  def variables(self, use_ema: bool = True) -> dict:
    params = self.ema_params if use_ema and self.ema_params is not None else self.params
    return {'params': params, 'consts': self.consts}


def init_state(model: EIWFlow, optimizer, use_ema: bool, rng, first_batch) -> TrainState:
  """Data-dependent init on the first global batch (the same for any device count)."""
  init_rng, state_rng = jax.random.split(rng)
  variables = api.init(model, init_rng, first_batch)
  params = variables['params']
  zero = jnp.zeros((), jnp.int32)
  return TrainState(step=zero, params=params, consts=variables.get('consts', {}),
                    opt_state=optimizer.init(params), ema_params=params if use_ema else None,
                    rng=state_rng, nonfinite_streak=zero, nonfinite_total=zero)
