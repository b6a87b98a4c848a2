"""Resuming under changed optimiser settings.

Gradient clipping (`optim.grad_clip > 0`) and the EMA of the parameters
(`optim.ema_decay > 0`) change the training state's structure, not the model: a
run stopped by non-finite steps must be able to resume with clipping switched
on. A checkpoint saved with either switched the other way is restored as saved,
then converted: what matches is kept, a new clipping state is empty, a new EMA
starts at the parameters, a dropped one is discarded. The learning rate and the
warm-up change no structure (the schedule's step count is restored as it was).
"""
from __future__ import annotations

import copy
import functools

import jax
import jax.numpy as jnp
import optax


def adapters(config, abstract_fn):
  """`(description, abstract_fn, convert)` for `Checkpointer.restore`.

  Args:
    config: today's config.
    abstract_fn: config -> the abstract training state that config builds.
  """
  o = config.optim
  clip, ema = o.grad_clip > 0, o.ema_decay > 0
  out = []
  for saved_clip, saved_ema in ((not clip, ema), (clip, not ema), (not clip, not ema)):
    variant = copy.deepcopy(config)
    variant.optim.grad_clip = 1.0 if saved_clip else 0.0
    variant.optim.ema_decay = 0.5 if saved_ema else 0.0
    said = []
    if saved_clip != clip:
      said.append(f'with gradient clipping {"on" if saved_clip else "off"}')
    if saved_ema != ema:
      said.append(f'with the EMA of the parameters {"on" if saved_ema else "off"}')
    note = ' and '.join(said) + '; restored what matches'
    if ema and not saved_ema:
      note += ', the EMA starts from the parameters'
    out.append((note, functools.partial(abstract_fn, variant),
                functools.partial(convert, clip, ema, saved_clip)))
  return out


def convert(clip: bool, ema: bool, saved_clip: bool, state):
  """A TrainState restored under the other clipping/EMA settings, in today's structure."""
  opt_state = state.opt_state
  if saved_clip and not clip:
    opt_state = opt_state[1]  # chain(clip_by_global_norm, opt)
  elif clip and not saved_clip:
    opt_state = (optax.EmptyState(), opt_state)
  ema_params = None
  if ema:
    ema_params = state.ema_params
    if ema_params is None:
      ema_params = jax.tree.map(jnp.copy, state.params)  # own buffers: the state is donated
  return state.replace(opt_state=opt_state, ema_params=ema_params)
