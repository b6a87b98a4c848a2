"""Config -> model. The model keys, their defaults and their checks live here.

`config.model` holds the architecture and the objective's lambda; `config.data`
the image shape and bit depth (see configs/). `build(config)` returns an EIWFlow.
"""
from __future__ import annotations

import difflib
import functools

import jax.numpy as jnp
import ml_collections

from eiw_jax import ffjord, shuffle
from eiw_jax.bijectors.scan import REMAT_POLICIES
from eiw_jax.denseflow import DenseFlowDequantizer, DenseFlowScale, denseflow_74_10
from eiw_jax.densenet import TOKENS
from eiw_jax.dequant import UniformDequantizer, VariationalDequantizer
from eiw_jax.errors import UserError
from eiw_jax.flow import GlowScale, GlowStep, MultiScaleFlow
from eiw_jax.model import EIWFlow


def model_config(**overrides) -> ml_collections.ConfigDict:
  """The model keys with defaults (Glow-style backbone, the paper's Shuffle)."""
  cfg = ml_collections.ConfigDict(dict(
      backbone='glow',          # 'glow' (N Glow steps per scale), 'denseflow' or 'ffjord'
      num_scales=3,             # K
      num_steps=6,              # N flow steps per scale (glow backbone)
      hidden=512,               # conditioner width (glow backbone)
      lu=True,                  # LU-parametrised 1x1 convolutions
      coupling='affine',        # 'affine' or 'additive'
      log_scale_bound=2.0,      # log-scale = b * tanh(s / b)
      initial_squeeze=True,
      scan=True,                # stack repeated steps and run them with lax.scan
      invertible_grad=False,    # recompute activations from outputs in the backward pass
      remat='convs',            # what a scanned step keeps for the backward pass:
                                # 'convs', 'spatial_convs' (less memory) or 'off'
      shuffle=True,             # the EIW Shuffle; False = vanilla multi-scale flow
      shuffle_mode='likelihood',  # the Shuffle's reading: 'likelihood', 'kl', 'oracle',
                                # 'random' or 'fixed' (eiw_jax/shuffle/__init__.py)
      shuffle_unit='channel',   # what the Shuffle moves: u_k's channels or whole pre-squeeze
                                # feature maps ('map': four channels together)
      shuffle_halves='keep_order',  # each half keeps its units' order ('sorted': by score)
      shuffle_permutations=[],  # shuffle_mode='fixed': one order of units per transition
      shuffle_reduction=16,     # guider reduction ratio r
      guider_min_width=8,       # the guider's hidden width is max(4C // r, this)
      solver_layers=2,          # L_S
      solver_input='normalized',  # the solver's constant input: 4C/4C ('normalized') or 4C ('count')
      kl_grad_to_guider=True,   # reading 'kl': False holds P constant in the KL
      shuffle_seed=0,           # reading 'random': the permutations' seed
      shuffle_refresh_every=100,  # the shuffler's order is refreshed from Q every N steps
      shuffle_statistic='dataset_kl',  # likelihood/oracle: what the units are ranked by
                                # ('dataset_kl', 'nll', 'divergence': shuffle/statistics.py)
      kl_weight=1e-3,           # lambda of Eq. 12
      kl_units='nats',          # lambda*KL added to the NLL in 'nats' or to bits/dim ('bpd')
      split_prior='standard',   # 'standard' (paper) or 'conditional' (Glow)
      learned_base=False,
      dequantizer='uniform',    # 'uniform' or 'variational'
      dequant_steps=4,
      dequant_hidden=32,
      compute_dtype='float32',  # conditioner nets: 'float32' or 'bfloat16' (logdets stay float32)
      denseflow=ml_collections.ConfigDict(),  # backbone='denseflow' settings
      ffjord=ml_collections.ConfigDict(),  # backbone='ffjord' settings (ffjord_config)
  ))
  unknown = sorted(set(overrides) - set(cfg.keys()))
  if unknown:
    near = difflib.get_close_matches(unknown[0], sorted(cfg.keys()), n=1)
    hint = f'did you mean {near[0]}?' if near else f'the keys are: {", ".join(sorted(cfg.keys()))}'
    raise UserError(f'unknown model key {unknown[0]!r}; {hint}')
  cfg.update(overrides)
  return cfg


# Keys added after configs were first saved, whose absence (a config.json written
# before they existed) means the behaviour of that time, not today's default.
LEGACY_VALUES = {'model.shuffle_mode': 'kl', 'model.solver_input': 'count',
                 'model.shuffle_refresh_every': 1, 'optim.shuffle_optimizer': 'shared',
                 'model.denseflow.norm': 'group', 'model.shuffle_statistic': 'nll',
                 'model.shuffle_unit': 'channel', 'model.shuffle_halves': 'sorted',
                 'model.guider_min_width': 1, 'model.shuffle_permutations': [],
                 'model.shuffle_seed': 0, 'model.denseflow.net.tokens': 'pixels'}
NORMS = ('group', 'batch')
# Model keys that old saved configs may lack (LEGACY_VALUES, or read with .get).
LEGACY_KEYS = {name.split('.')[1] for name in LEGACY_VALUES if name.startswith('model.')} | {
    'kl_units', 'compute_dtype', 'ffjord'}


def legacy_get(config, name: str):
  """config's value of the dotted key `name` ('model.shuffle_mode'), or the value
  its absence means (LEGACY_VALUES) in a config saved before the key existed."""
  group, key = name.split('.')
  return config[group].get(key, LEGACY_VALUES[name])


_DATA_KEYS = ('image_size', 'channels', 'num_bits')


def check_structure(config) -> None:
  """config.model and config.data exist and hold every key a model needs."""
  if not isinstance(config, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    raise UserError(f'the config must be an ml_collections.ConfigDict, got {type(config).__name__}; '
                    'wrap it: ml_collections.ConfigDict(dict(model=..., data=...))')
  needed = {'model': [k for k in model_config().keys() if k not in LEGACY_KEYS],
            'data': _DATA_KEYS}
  for group, keys in needed.items():
    if group not in config:
      raise UserError(f'the config has no {group!r} group; give config.{group} '
                      f'({"eiw_jax.model_config(...)" if group == "model" else "dict(" + ", ".join(f"{k}=..." for k in _DATA_KEYS) + ")"})')
    missing = [k for k in keys if k not in config[group]]
    if missing:
      hint = ('start from eiw_jax.model_config(**overrides)' if group == 'model'
              else f'give config.data.{missing[0]}')
      raise UserError(f'config.{group} has no key {missing[0]!r}; {hint}')


def validate(config) -> None:
  """Refuses configurations that cannot build a working model (UserError, one line)."""
  check_structure(config)
  m, d = config.model, config.data
  if m.num_scales < 1:
    raise UserError(f'model.num_scales must be >= 1, got {m.num_scales}; set --config.model.num_scales=2')
  if not 0 <= m.kl_weight < float('inf'):  # NaN too
    raise UserError(f'model.kl_weight (lambda) must be >= 0 and finite, got {m.kl_weight}; '
                    'the paper uses 1e-3')
  if not 1 <= d.num_bits <= 8:
    raise UserError(f'data.num_bits must be in 1..8, got {d.num_bits}')
  for key in ('image_size', 'channels'):
    if not _positive_int(d[key]):
      raise UserError(f'data.{key} must be an integer >= 1, got {d[key]!r}; '
                      f'set --config.data.{key}')
  _check_sizes(m)
  factor = 2 ** (m.num_scales - 1 + int(m.initial_squeeze))
  if d.image_size % factor:
    raise UserError(
        f'data.image_size={d.image_size} is not divisible by {factor} (2^(num_scales-1'
        f'{"+1" if m.initial_squeeze else ""})); use fewer scales (--config.model.num_scales) '
        f'or an image size divisible by {factor}')
  if m.backbone not in BACKBONES:
    raise UserError(f"model.backbone must be 'glow', 'denseflow' or 'ffjord', got {m.backbone!r}")
  if m.backbone == 'ffjord':
    _check_ffjord(m)
  if m.backbone == 'denseflow' and 'units' not in m.denseflow:
    raise UserError("model.backbone='denseflow' needs the model.denseflow settings, which "
                    'this config lacks; use a DenseFlow config (configs/cifar10.py)')
  if m.backbone == 'denseflow' and len(m.denseflow.units) != m.num_scales:
    raise UserError(f'model.denseflow.units has {len(m.denseflow.units)} scales but '
                    f'model.num_scales={m.num_scales}; make them agree')
  if m.backbone == 'denseflow':
    norm = m.denseflow.get('norm', 'group')
    if norm not in NORMS:
      raise UserError(f"model.denseflow.norm must be 'group' or 'batch', got {norm!r}; "
                      "set --config.model.denseflow.norm=group")
    tokens = m.denseflow.net.get('tokens', 'pixels')
    if tokens not in TOKENS:
      raise UserError(f"model.denseflow.net.tokens must be 'pixels' or 'nchw_reshape', got "
                      f"{tokens!r}; set --config.model.denseflow.net.tokens=pixels")
    if norm == 'batch' and m.invertible_grad:
      raise UserError("model.denseflow.norm='batch' needs the stored activations of ordinary "
                      'backprop; set --config.model.invertible_grad=False')
  if m.coupling not in ('affine', 'additive'):
    raise UserError(f"model.coupling must be 'affine' or 'additive', got {m.coupling!r}")
  if m.dequantizer not in ('uniform', 'variational'):
    raise UserError(f"model.dequantizer must be 'uniform' or 'variational', got {m.dequantizer!r}")
  if m.split_prior not in ('standard', 'conditional'):
    raise UserError(f"model.split_prior must be 'standard' or 'conditional', got {m.split_prior!r}")
  shuffle.check_settings(shuffle_settings(config), m.num_scales)
  if m.get('kl_units', 'nats') not in ('nats', 'bpd'):
    raise UserError(f"model.kl_units must be 'nats' or 'bpd', got {m.kl_units!r}; "
                    "set --config.model.kl_units=nats")
  if m.get('remat', 'convs') not in REMAT_POLICIES:
    raise UserError(f"model.remat must be one of {', '.join(map(repr, REMAT_POLICIES))}, got "
                    f"{m.remat!r}; set --config.model.remat=convs")
  dtype = m.get('compute_dtype', 'float32')  # configs saved before the key existed
  if dtype not in _COMPUTE_DTYPES:
    raise UserError(f"model.compute_dtype must be 'float32' or 'bfloat16', got {dtype!r}")


def shuffle_settings(config) -> shuffle.ShuffleSettings:
  """The Shuffle's settings from config.model (an old config's missing keys read as
  LEGACY_VALUES)."""
  m = config.model
  get = lambda key: legacy_get(config, f'model.{key}')
  return shuffle.ShuffleSettings(
      mode=get('shuffle_mode'), unit=get('shuffle_unit'), halves=get('shuffle_halves'),
      statistic=get('shuffle_statistic'), reduction=m.shuffle_reduction,
      guider_min_width=get('guider_min_width'), solver_layers=m.solver_layers,
      solver_input=get('solver_input'), kl_grad_to_guider=m.kl_grad_to_guider,
      seed=get('shuffle_seed'), refresh_every=get('shuffle_refresh_every'),
      permutations=shuffle.permutations_from(get('shuffle_permutations')))


def _positive_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_sizes(m) -> None:
  """Widths, depths and counts that must be positive (else a traceback or NaN later)."""
  keys = []
  if m.get('backbone', 'glow') == 'glow':
    keys += ['num_steps', 'hidden']
  if m.get('shuffle', True):
    keys += ['shuffle_reduction', 'solver_layers']
  if m.get('dequantizer') == 'variational' and m.get('backbone', 'glow') != 'denseflow':
    keys += ['dequant_steps', 'dequant_hidden']
  for key in keys:
    if not _positive_int(m[key]):
      raise UserError(f'model.{key} must be an integer >= 1, got {m[key]!r}; set '
                      f'--config.model.{key} (default {model_config()[key]})')
  bound = m.get('log_scale_bound', 2.0)
  if m.get('coupling') == 'affine' and not bound > 0:
    raise UserError(f'model.log_scale_bound must be > 0 (log-scales are b*tanh(s/b)), got '
                    f'{bound}; set --config.model.log_scale_bound=2.0')


BACKBONES = ('glow', 'denseflow', 'ffjord')
_FFJORD_CHOICES = dict(solver=tuple(ffjord.SOLVERS), trace=ffjord.TRACES, probe=ffjord.PROBES,
                       adjoint=ffjord.ADJOINTS, time_layer=ffjord.TIME_LAYERS)


def _check_ffjord(m) -> None:
  """model.ffjord holds every key of ffjord_defaults() with a usable value."""
  f = m.get('ffjord') or {}
  defaults = ffjord.ffjord_defaults()
  if not f:
    raise UserError("model.backbone='ffjord' needs the model.ffjord settings, which this "
                    'config lacks; start from eiw_jax.builder.ffjord_config() or cifar10.py:ffjord')
  unknown = sorted(set(f.keys()) - set(defaults))
  if unknown:
    raise UserError(f'unknown key model.ffjord.{unknown[0]}; the keys are: {", ".join(defaults)}')
  missing = [k for k in defaults if k not in f]
  if missing:
    raise UserError(f'model.ffjord has no key {missing[0]!r}; set --config.model.ffjord.'
                    f'{missing[0]}={defaults[missing[0]]}')
  for key, allowed in _FFJORD_CHOICES.items():
    if f[key] not in allowed:
      raise UserError(f'model.ffjord.{key} must be one of {", ".join(allowed)}, got {f[key]!r}; '
                      f'set --config.model.ffjord.{key}={defaults[key]}')
  for key in ('blocks', 'hidden', 'layers', 'max_steps'):
    if not _positive_int(f[key]):
      raise UserError(f'model.ffjord.{key} must be an integer >= 1, got {f[key]!r}; '
                      f'set --config.model.ffjord.{key}={defaults[key]}')
  for key in ('kinetic_weight', 'jacobian_weight'):
    if not 0 <= f[key] < float('inf'):
      raise UserError(f'model.ffjord.{key} must be >= 0 and finite, got {f[key]!r}; '
                      f'set --config.model.ffjord.{key}=0 (off)')
  if f.jacobian_weight and f.trace != 'hutchinson':
    raise UserError("model.ffjord.jacobian_weight > 0 needs model.ffjord.trace='hutchinson'; "
                    'set --config.model.ffjord.trace=hutchinson')
  for key in ('rtol', 'atol'):
    if not 0 < f[key] < 1:
      raise UserError(f'model.ffjord.{key} must be in (0, 1), got {f[key]!r}; '
                      f'set --config.model.ffjord.{key}=1e-5')
  if not isinstance(f.fixed_steps, int) or f.fixed_steps < 0:
    raise UserError(f'model.ffjord.fixed_steps must be an integer >= 0 (0: adaptive), got '
                    f'{f.fixed_steps!r}; set --config.model.ffjord.fixed_steps=0')
  if f.fixed_steps and f.fixed_steps > f.max_steps:
    raise UserError(f'model.ffjord.fixed_steps={f.fixed_steps} exceeds model.ffjord.max_steps='
                    f'{f.max_steps}; raise max_steps')
  if m.get('compute_dtype', 'float32') != 'float32':
    raise UserError("model.backbone='ffjord' solves its ODE in float32; set "
                    '--config.model.compute_dtype=float32')


# The conditioners' compute dtype (None: float32); parameters stay float32.
_COMPUTE_DTYPES = {'float32': None, 'bfloat16': jnp.bfloat16}


def _glow_body(k, name, num_steps, scan, invertible_grad, remat, **step_kwargs):
  del k  # every scale has the same structure
  return GlowScale(num_steps=num_steps, step=functools.partial(GlowStep, **step_kwargs),
                   scan=scan, invertible_grad=invertible_grad, remat=remat, name=name)


def _denseflow_body(k, name, units, modules, net, dequant, **scale_kwargs):
  del dequant  # the dequantizer's settings
  return DenseFlowScale(num_units=units[k], num_modules=modules[k], name=name,
                        **net, **scale_kwargs)


def _ffjord_body(k, name, blocks, actnorm, **block):
  del k  # every scale has the same structure
  return ffjord.FFJORDScale(blocks=blocks, actnorm=actnorm, block=block, name=name)


def ffjord_config(**overrides) -> ml_collections.ConfigDict:
  """The model keys of a multi-scale FFJORD with the Shuffle at its transitions: the
  discrete backbone's assembly (squeeze, Shuffle, split) around CNF scale bodies,
  uniform dequantization and no initial squeeze (the first CNF sees the image)."""
  cfg = model_config(backbone='ffjord', initial_squeeze=False)
  cfg.ffjord = ml_collections.ConfigDict(ffjord.ffjord_defaults())
  cfg.update(overrides)
  return cfg


def denseflow_config(**overrides) -> ml_collections.ConfigDict:
  """The model keys of DenseFlow-74-10 with the Shuffle at its two transitions
  (DESIGN §2): learned base, variational dequantizer, plain 1x1 convolutions."""
  cfg = model_config(backbone='denseflow', num_scales=3, lu=False, learned_base=True,
                     dequantizer='variational')
  cfg.denseflow = ml_collections.ConfigDict(denseflow_74_10())
  cfg.update(overrides)
  return cfg


def uses_batch_stats(config) -> bool:
  """True when the model keeps batch statistics (model.denseflow.norm='batch'): the
  training step then applies it with the 'consts' collection mutable."""
  m = config.model
  return m.backbone == 'denseflow' and m.denseflow.get('norm', 'group') == 'batch'


def build(config) -> EIWFlow:
  """Builds the EIWFlow a config describes (config.model and config.data)."""
  validate(config)
  m, d = config.model, config.data
  dtype = _COMPUTE_DTYPES[m.get('compute_dtype', 'float32')]
  remat = m.get('remat', 'convs')  # configs saved before the key existed
  if m.backbone == 'glow':
    step = dict(hidden=m.hidden, lu=m.lu, affine=m.coupling == 'affine',
                log_scale_bound=m.log_scale_bound)
    if dtype is not None:
      step['dtype'] = dtype  # GlowStep.dtype -> its ConvNet conditioner
    body = functools.partial(_glow_body, num_steps=m.num_steps, scan=m.scan,
                             invertible_grad=m.invertible_grad, remat=remat, **step)
  elif m.backbone == 'ffjord':
    body = functools.partial(_ffjord_body, **m.ffjord.to_dict())
  else:
    body = functools.partial(_denseflow_body, lu=m.lu, log_scale_bound=m.log_scale_bound,
                             invertible_grad=m.invertible_grad, remat=remat, dtype=dtype,
                             **m.denseflow.to_dict())
  flow = MultiScaleFlow(
      num_scales=m.num_scales, body=body, shuffle=m.shuffle,
      initial_squeeze=m.initial_squeeze, split_prior=m.split_prior,
      learned_base=m.learned_base, shuffle_settings=shuffle_settings(config))
  if m.dequantizer == 'uniform':
    dequantizer = UniformDequantizer()
  elif m.backbone == 'denseflow':
    dequantizer = DenseFlowDequantizer(**m.denseflow.dequant.to_dict(), dtype=dtype)
  else:
    dequantizer = VariationalDequantizer(num_steps=m.dequant_steps, hidden=m.dequant_hidden,
                                         dtype=dtype)
  return EIWFlow(flow=flow, dequantizer=dequantizer,
                 image_shape=(d.image_size, d.image_size, d.channels),
                 num_bits=d.num_bits, kl_weight=m.kl_weight,
                 kl_units=m.get('kl_units', 'nats'))
