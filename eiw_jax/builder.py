"""Config -> model. The model keys, their defaults and their checks.

`config.model` holds the architecture and the objective's lambda; `config.data`
the image shape and bit depth (see configs/). `model_config(**overrides)` gives
every model key; `build(config)` checks the config (`validate`) and returns an
EIWFlow. The Shuffle's keys and checks are shuffle.settings', each backbone's
are its module's (eiw_jax/backbones/). A config saved by an older version is
brought to today's keys by `eiw_jax.config.upgrade` before it gets here.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import ml_collections

from eiw_jax import shuffle
from eiw_jax.backbones import BACKBONES
from eiw_jax.bijectors.scan import REMAT_POLICIES
from eiw_jax.dequant import UniformDequantizer, VariationalDequantizer
from eiw_jax.errors import UserError, positive_int, refuse_unknown
from eiw_jax.flow import MultiScaleFlow
from eiw_jax.model import EIWFlow

# The conditioners' compute dtype (None: float32); parameters stay float32.
COMPUTE_DTYPES = {'float32': None, 'bfloat16': jnp.bfloat16}
DEQUANTIZERS = ('uniform', 'variational')
SPLIT_PRIORS = ('standard', 'conditional')
KL_UNITS = ('nats', 'bpd')
DATA_KEYS = ('image_size', 'channels', 'num_bits')


def _keys() -> dict:
  return dict(
      backbone='glow',          # 'glow', 'denseflow' or 'ffjord' (eiw_jax/backbones/)
      num_scales=3,             # K
      num_steps=6,              # N flow steps per scale (glow backbone)
      hidden=512,               # conditioner width (glow backbone)
      lu=True,                  # LU-parametrised 1x1 convolutions
      coupling='affine',        # 'affine' or 'additive' (glow backbone)
      log_scale_bound=2.0,      # log-scale = b * tanh(s / b)
      initial_squeeze=True,
      scan=True,                # stack repeated steps and run them with lax.scan
      invertible_grad=False,    # recompute activations from outputs in the backward pass
      remat='convs',            # what a scanned step keeps for the backward pass:
                                # 'convs', 'spatial_convs' (less memory) or 'off'
      shuffle=True,             # the EIW Shuffle; False = vanilla multi-scale flow
      **shuffle.config_defaults(),  # shuffle_mode, shuffle_unit, ... (shuffle/settings.py)
      kl_weight=1e-3,           # lambda of Eq. 12
      kl_units='nats',          # lambda*KL added to the NLL in 'nats' or to bits/dim ('bpd')
      split_prior='standard',   # 'standard' (paper) or 'conditional' (Glow)
      learned_base=False,
      dequantizer='uniform',    # 'uniform' or 'variational'
      dequant_steps=4,
      dequant_hidden=32,
      compute_dtype='float32',  # conditioner nets: 'float32' or 'bfloat16' (logdets stay float32)
      denseflow=ml_collections.ConfigDict(),  # backbone='denseflow' settings
      ffjord=ml_collections.ConfigDict(),  # backbone='ffjord' settings
  )


def model_config(**overrides: Any) -> ml_collections.ConfigDict:
  """Every model key with its default: the Glow backbone and the paper's Shuffle,
  or with `backbone='denseflow'` / `'ffjord'` that backbone's defaults (DenseFlow-74-10,
  a multi-scale FFJORD); `overrides` are applied last."""
  cfg = ml_collections.ConfigDict(_keys())
  refuse_unknown(overrides, cfg, 'model key')
  cfg.backbone = overrides.get('backbone', cfg.backbone)
  _check_choice(cfg, 'backbone', tuple(BACKBONES))
  cfg.update(BACKBONES[cfg.backbone].model_defaults())
  cfg.update(overrides)
  return cfg


def check_structure(config) -> None:
  """config.model and config.data exist and hold every key a model needs, and nothing else
  in config.model."""
  if not isinstance(config, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    raise UserError(f'the config must be an ml_collections.ConfigDict, got {type(config).__name__}; '
                    'wrap it: ml_collections.ConfigDict(dict(model=..., data=...))')
  for group, example in (('model', 'eiw_jax.model_config(...)'),
                         ('data', 'dict(' + ', '.join(f'{k}=...' for k in DATA_KEYS) + ')')):
    if group not in config:
      raise UserError(f'the config has no {group!r} group; give config.{group} ({example})')
  keys = _keys()
  refuse_unknown(config.model.keys(), keys, 'key', 'model.')
  for group, needed in (('model', keys), ('data', DATA_KEYS)):
    missing = [k for k in needed if k not in config[group]]
    if missing:
      hint = ('start from eiw_jax.model_config(**overrides)' if group == 'model'
              else f'give config.data.{missing[0]}')
      raise UserError(f'config.{group} has no key {missing[0]!r}; {hint}')


def validate(config: ml_collections.ConfigDict) -> None:
  """Refuses configurations that cannot build a working model (UserError, one line)."""
  check_structure(config)
  m, d = config.model, config.data
  if not positive_int(m.num_scales):
    raise UserError(f'model.num_scales must be >= 1 (an integer), got {m.num_scales!r}; '
                    'set config.model.num_scales=2')
  if not 0 <= m.kl_weight < float('inf'):  # NaN too
    raise UserError(f'model.kl_weight (lambda) must be >= 0 and finite, got {m.kl_weight}; '
                    'the paper uses 1e-3')
  if not 1 <= d.num_bits <= 8:
    raise UserError(f'data.num_bits must be in 1..8, got {d.num_bits}')
  for key in ('image_size', 'channels'):
    if not positive_int(d[key]):
      raise UserError(f'data.{key} must be an integer >= 1, got {d[key]!r}; '
                      f'set config.data.{key}')
  _check_sizes(m)
  factor = 2 ** (m.num_scales - 1 + int(m.initial_squeeze))
  if d.image_size % factor:
    raise UserError(
        f'data.image_size={d.image_size} is not divisible by {factor} (2^(num_scales-1'
        f'{"+1" if m.initial_squeeze else ""})); use fewer scales (config.model.num_scales) '
        f'or an image size divisible by {factor}')
  _check_choice(m, 'backbone', tuple(BACKBONES))
  BACKBONES[m.backbone].check(m)
  for key, allowed in (('dequantizer', DEQUANTIZERS), ('split_prior', SPLIT_PRIORS),
                       ('kl_units', KL_UNITS), ('remat', tuple(REMAT_POLICIES)),
                       ('compute_dtype', tuple(COMPUTE_DTYPES))):
    _check_choice(m, key, allowed)
  shuffle.check_settings(shuffle.from_config(m), m.num_scales)


def _check_choice(m, key: str, allowed: tuple) -> None:
  if m[key] not in allowed:
    names = [repr(a) for a in allowed]
    text = f'{", ".join(names[:-1])} or {names[-1]}' if len(names) > 1 else names[0]
    raise UserError(f'model.{key} must be {text}, got {m[key]!r}; '
                    f'set config.model.{key}={allowed[0]}')


def _check_sizes(m) -> None:
  """Widths, depths and counts that must be positive (else a traceback or NaN later)."""
  keys = []
  if m.backbone == 'glow':
    keys += ['num_steps', 'hidden']
  if m.shuffle:
    keys += ['shuffle_reduction', 'solver_layers']
  if m.dequantizer == 'variational' and m.backbone != 'denseflow':
    keys += ['dequant_steps', 'dequant_hidden']
  for key in keys:
    if not positive_int(m[key]):
      raise UserError(f'model.{key} must be an integer >= 1, got {m[key]!r}; set '
                      f'config.model.{key} (default {_keys()[key]})')
  if m.coupling == 'affine' and not m.log_scale_bound > 0:
    raise UserError(f'model.log_scale_bound must be > 0 (log-scales are b*tanh(s/b)), got '
                    f'{m.log_scale_bound}; set config.model.log_scale_bound=2.0')


def build(config: ml_collections.ConfigDict) -> EIWFlow:
  """Builds the EIWFlow a config describes (config.model and config.data)."""
  validate(config)
  m, d = config.model, config.data
  dtype = COMPUTE_DTYPES[m.compute_dtype]
  backbone = BACKBONES[m.backbone]
  flow = MultiScaleFlow(
      num_scales=m.num_scales, body=backbone.body(m, dtype), shuffle=m.shuffle,
      initial_squeeze=m.initial_squeeze, split_prior=m.split_prior,
      learned_base=m.learned_base, shuffle_settings=shuffle.from_config(m))
  if m.dequantizer == 'uniform':
    dequantizer = UniformDequantizer()
  elif hasattr(backbone, 'dequantizer'):
    dequantizer = backbone.dequantizer(m, dtype)
  else:
    dequantizer = VariationalDequantizer(num_steps=m.dequant_steps, hidden=m.dequant_hidden,
                                         dtype=dtype)
  return EIWFlow(flow=flow, dequantizer=dequantizer,
                 image_shape=(d.image_size, d.image_size, d.channels),
                 num_bits=d.num_bits, kl_weight=m.kl_weight, kl_units=m.kl_units)
