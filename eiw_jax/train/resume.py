"""Resuming under changed optimiser settings, and states saved by older versions.

Gradient clipping (`optim.grad_clip > 0`) and the EMA of the parameters
(`optim.ema_decay > 0`) change the training state's structure, not the model: a
run stopped by non-finite steps must be able to resume with clipping switched
on. A checkpoint saved with either switched the other way is restored as saved,
then converted: what matches is kept, a new clipping state is empty, a new EMA
starts at the parameters, a dropped one is discarded. The learning rate and the
warm-up change no structure (the schedule's step count is restored as it was).

Before the Shuffle refreshed its order inside the model's own apply, its constants
held the order without a count of updates (`consts/.../updates`, shuffle/base.py):
such a state is restored with the count set to the state's step, which is what
the model would have counted.

`model_differences` tells a checkpoint of another model (other parameter names or
shapes) from one saved under other optimiser settings, before anything is read.
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
  # The same settings, saved before the Shuffle counted its updates (for a model
  # without counters this is today's structure, which was tried before any adapter).
  out.append(('before the Shuffle counted its updates; the count set to the step',
              functools.partial(_without_counters_of, abstract_fn, config), _with_counters))
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
    out.append((note + '; the Shuffle\'s update count set to the step',
                functools.partial(_without_counters_of, abstract_fn, variant),
                functools.partial(_counted_convert, clip, ema, saved_clip)))
  return out


def _shuffle_consts(state, fn):
  """`state` with fn applied to each Shuffle's constants ({'order', 'updates'})."""
  flow = state.consts.get('flow')
  if not flow:
    return state
  flow = {name: fn(c) if name.startswith('shuffle_') else c for name, c in flow.items()}
  return state.replace(consts={**state.consts, 'flow': flow})


def _without_counters(state):
  return _shuffle_consts(state, lambda c: {k: v for k, v in c.items() if k != 'updates'})


def _without_counters_of(abstract_fn, config):
  return _without_counters(abstract_fn(config))


def _with_counters(state):
  step = state.step
  return _shuffle_consts(
      state, lambda c: {**c, 'updates': step + 0} if 'order' in c else c)  # own buffer


def _counted_convert(clip, ema, saved_clip, state):
  return _with_counters(convert(clip, ema, saved_clip, state))


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


def _dotted(path) -> str:
  """A tree path as orbax names an array ('params.flow.scale_0...')."""
  return '.'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)


def model_differences(saved: dict, abstract_state) -> list:
  """How the model variables of a saved state ({dotted name: shape}) differ from
  `abstract_state`'s: parameters of other shapes, or only on one side, and constants
  of other shapes (a constant may be missing: older states lack the Shuffle's count).
  The optimiser's state is not compared: its structure follows optim.* settings."""
  wanted = {_dotted(p): tuple(x.shape)
            for p, x in jax.tree_util.tree_leaves_with_path(abstract_state)}
  params = lambda names: {k for k in names if k.startswith('params.')}
  out = [f'{k} is {saved[k]} there, {wanted[k]} here' for k in sorted(wanted)
         if k.startswith(('params.', 'consts.')) and k in saved and saved[k] != wanted[k]]
  out += [f'{k} exists only there' for k in sorted(params(saved) - params(wanted))]
  out += [f'{k} is missing there' for k in sorted(params(wanted) - params(saved))]
  return out
