"""One training update (the function the trainer jits over the device mesh).

Per-step randomness is fold_in(rng, step). A step whose loss or gradient is not
finite leaves the parameters, constants and optimiser state unchanged and is
counted (`nonfinite_streak`, `nonfinite_total`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from eiw_jax import api, shuffle
from eiw_jax.model import EIWFlow
from eiw_jax.train.state import TrainState


def train_step(model: EIWFlow, optimizer, ema_decay: float, state: TrainState, batch):
  """One update. Returns (new state, metrics). Non-finite steps change nothing but counters.

  The model's constants are those its training apply returns (api.train_loss: batch
  statistics' running averages, the Shuffle's order and update count).
  """
  rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    variables = {'params': params, 'consts': state.consts}
    loss, metrics, consts = api.train_loss(model, variables, batch, rng)
    return loss, (metrics, {**state.consts, **consts})  # the state's structure kept

  (loss, (metrics, consts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
  ema = state.ema_params
  if ema is not None:
    ema = keep(jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, ema, params), ema)
  bad = (~finite).astype(jnp.int32)
  new_state = state.replace(
      step=state.step + 1, params=keep(params, state.params),
      consts=keep(consts, state.consts),
      opt_state=keep(opt_state, state.opt_state), ema_params=ema,
      nonfinite_streak=(state.nonfinite_streak + 1) * bad,
      nonfinite_total=state.nonfinite_total + bad)
  if model.flow.shuffle:  # the order this step used against the one the step before used
    metrics.update(shuffle.split_changes(
        model.flow, {'params': state.params['flow'], 'consts': state.consts.get('flow', {})},
        {'params': new_state.params['flow'], 'consts': new_state.consts.get('flow', {})}))
  metrics = dict(metrics, grad_norm=grad_norm, nonfinite=bad,
                 nonfinite_total=new_state.nonfinite_total,
                 nonfinite_streak=new_state.nonfinite_streak)
  return new_state, metrics
