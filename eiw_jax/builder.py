"""Config -> model. The model keys, their defaults and their checks live here.

`config.model` holds the architecture and the objective's lambda; `config.data`
the image shape and bit depth (see configs/). `build(config)` returns an EIWFlow.
"""
from __future__ import annotations

import functools

import ml_collections

from eiw_jax.dequant import UniformDequantizer, VariationalDequantizer
from eiw_jax.errors import UserError
from eiw_jax.flow import GlowScale, GlowStep, MultiScaleFlow
from eiw_jax.model import EIWFlow


def model_config(**overrides) -> ml_collections.ConfigDict:
  """The model keys with defaults (Glow-style backbone, the paper's Shuffle)."""
  cfg = ml_collections.ConfigDict(dict(
      backbone='glow',          # 'glow' (N Glow steps per scale) or 'denseflow'
      num_scales=3,             # K
      num_steps=6,              # N flow steps per scale (glow backbone)
      hidden=512,               # conditioner width (glow backbone)
      lu=True,                  # LU-parametrised 1x1 convolutions
      coupling='affine',        # 'affine' or 'additive'
      log_scale_bound=2.0,      # log-scale = b * tanh(s / b)
      initial_squeeze=True,
      scan=True,                # stack repeated steps and run them with lax.scan
      invertible_grad=False,    # recompute activations from outputs in the backward pass
      shuffle=True,             # the EIW Shuffle; False = vanilla multi-scale flow
      shuffle_reduction=16,     # guider reduction ratio r
      solver_layers=2,          # L_S
      kl_grad_to_guider=True,   # True: Algorithm 1; False: §3.5 (stop_gradient on P)
      kl_weight=1e-3,           # lambda of Eq. 12
      split_prior='standard',   # 'standard' (paper) or 'conditional' (Glow)
      learned_base=False,
      dequantizer='uniform',    # 'uniform' or 'variational'
      dequant_steps=4,
      dequant_hidden=32,
      denseflow=ml_collections.ConfigDict(),  # backbone='denseflow' settings
  ))
  cfg.update(overrides)
  return cfg


def validate(config) -> None:
  """Refuses configurations that cannot build a working model (UserError, one line)."""
  m, d = config.model, config.data
  if m.num_scales < 1:
    raise UserError(f'model.num_scales must be >= 1, got {m.num_scales}; set --config.model.num_scales=2')
  if m.kl_weight < 0:
    raise UserError(f'model.kl_weight (lambda) must be >= 0, got {m.kl_weight}; the paper uses 1e-3')
  if not 1 <= d.num_bits <= 8:
    raise UserError(f'data.num_bits must be in 1..8, got {d.num_bits}')
  factor = 2 ** (m.num_scales - 1 + int(m.initial_squeeze))
  if d.image_size % factor:
    raise UserError(
        f'data.image_size={d.image_size} is not divisible by {factor} (2^(num_scales-1'
        f'{"+1" if m.initial_squeeze else ""})); use fewer scales (--config.model.num_scales) '
        f'or an image size divisible by {factor}')
  if m.backbone not in ('glow', 'denseflow'):
    raise UserError(f"model.backbone must be 'glow' or 'denseflow', got {m.backbone!r}")
  if m.coupling not in ('affine', 'additive'):
    raise UserError(f"model.coupling must be 'affine' or 'additive', got {m.coupling!r}")
  if m.dequantizer not in ('uniform', 'variational'):
    raise UserError(f"model.dequantizer must be 'uniform' or 'variational', got {m.dequantizer!r}")
  if m.split_prior not in ('standard', 'conditional'):
    raise UserError(f"model.split_prior must be 'standard' or 'conditional', got {m.split_prior!r}")


def _glow_body(k, name, num_steps, scan, invertible_grad, **step_kwargs):
  del k  # every scale has the same structure
  return GlowScale(num_steps=num_steps, step=functools.partial(GlowStep, **step_kwargs),
                   scan=scan, invertible_grad=invertible_grad, name=name)


def build(config) -> EIWFlow:
  """Builds the EIWFlow a config describes (config.model and config.data)."""
  validate(config)
  m, d = config.model, config.data
  if m.backbone == 'glow':
    body = functools.partial(_glow_body, num_steps=m.num_steps, scan=m.scan,
                             invertible_grad=m.invertible_grad, hidden=m.hidden, lu=m.lu,
                             affine=m.coupling == 'affine', log_scale_bound=m.log_scale_bound)
  else:
    from eiw_jax import denseflow  # pylint: disable=g-import-not-at-top
    body = denseflow.scale_factory(m)
  flow = MultiScaleFlow(
      num_scales=m.num_scales, body=body, shuffle=m.shuffle,
      initial_squeeze=m.initial_squeeze, split_prior=m.split_prior,
      learned_base=m.learned_base, shuffle_reduction=m.shuffle_reduction,
      solver_layers=m.solver_layers, kl_grad_to_guider=m.kl_grad_to_guider)
  if m.dequantizer == 'uniform':
    dequantizer = UniformDequantizer()
  elif m.backbone == 'denseflow':
    from eiw_jax import denseflow  # pylint: disable=g-import-not-at-top
    dequantizer = denseflow.dequantizer_from_config(m)
  else:
    dequantizer = VariationalDequantizer(num_steps=m.dequant_steps, hidden=m.dequant_hidden)
  return EIWFlow(flow=flow, dequantizer=dequantizer,
                 image_shape=(d.image_size, d.image_size, d.channels),
                 num_bits=d.num_bits, kl_weight=m.kl_weight)
