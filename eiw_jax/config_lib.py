"""Shared config defaults for configs/*.py. Four groups: model, data, optim, train
(plus eval, the options of eval.py's modes). Every key can be overridden on the
command line (`--config.optim.lr=3e-4`); an unknown key is an error.
"""
from __future__ import annotations

import difflib

import ml_collections

from eiw_jax import augment
from eiw_jax.builder import denseflow_config, ffjord_config, model_config, validate
from eiw_jax.errors import UserError
from eiw_jax.losses import kl_scale


def base_config(*, name: str, image_size: int, channels: int, batch_size: int,
                train_steps: int, **model) -> ml_collections.ConfigDict:
  """A full config for dataset `name` with the paper's training defaults."""
  cfg = ml_collections.ConfigDict()
  cfg.model = model_config(**model)
  cfg.data = ml_collections.ConfigDict(dict(
      name=name, source='auto', dir='', download=False, image_size=image_size,
      channels=channels, num_bits=8, batch_size=batch_size, num_synthetic=512,
      augment='none'))      # training-set augmentation (eiw_jax/augment.py)
  cfg.optim = ml_collections.ConfigDict(dict(
      name='adamax',        # DenseFlow's optimiser; 'adam' is the paper's wording
      lr=1e-3, warmup_steps=5000, b1=0.9, b2=0.999,
      finetune_after=0,     # from this step on the flow's rate is finetune_lr; 0 = never
      finetune_lr=2e-5,     # DenseFlow's fine-tuning rate (eiw_jax/schedule.py)
      grad_clip=0.0,        # global-norm clipping; 0 = off
      ema_decay=0.0,        # EMA of the parameters (used for eval when > 0); 0 = off
      shuffle_optimizer='sgd',  # the solver / oracle statistics: own SGD ('sgd') or 'shared'
      shuffle_lr=20.0,      # the solver's SGD rate: Q relaxes to P in ~4/(lambda*shuffle_lr) steps
      guider_lr=1e-2,       # the guider's own Adam rate (with shuffle_optimizer='sgd')
      oracle_rate=0.01,     # reading 'oracle': the statistics' moving-average rate per step
      shuffle_freeze_after=0,  # fix the permutation after this many steps; 0 = never
  ))
  cfg.train = ml_collections.ConfigDict(dict(
      num_steps=train_steps, log_every=100, eval_every=5000, checkpoint_every=1000,
      keep_checkpoints=3, seed=0, eval_examples=1000, num_samples=64, sample_temperature=0.8,
      max_nonfinite_steps=20,   # stop after this many non-finite steps in a row
      distributed=False,        # jax.distributed.initialize() (multi-host TPU / GPU)
      coordinator_address='',   # with distributed: 'host:port' of process 0; '' = JAX detects
      num_processes=0,          # with coordinator_address: the number of processes
      process_id=-1,            # with coordinator_address: this process, 0 .. num_processes-1
      heartbeat_timeout_s=100,  # with distributed: a silent process counts as dead after this
      max_minutes=0.0,          # stop (eval + save) at the first logged step after this; 0 = off
  ))
  cfg.eval = ml_collections.ConfigDict(dict(
      batch_size=256, num_examples=0, iw_samples=0,
      temperatures=[0.0, 0.5, 0.7, 0.8, 0.9, 1.0], num_samples=64, num_pairs=4,
      interpolation_steps=8, manipulate_positive=1, manipulate_negative=0,
      entropy_examples=1000, channels_top=10, speed_batch_size=0, speed_iters=5,
      fid_num_samples=10000))
  return cfg


def leaf_keys(cfg, prefix=''):
  """Dotted key paths; free-form groups (empty in the defaults) count as leaves."""
  out = set()
  for key, value in cfg.items():
    if isinstance(value, ml_collections.ConfigDict) and value:
      out |= leaf_keys(value, f'{prefix}{key}.')
    else:
      out.add(f'{prefix}{key}')
  return out


def check_keys(cfg) -> None:
  """Refuses keys the defaults do not have (a typo would otherwise be ignored)."""
  known = leaf_keys(base_config(name='', image_size=1, channels=1, batch_size=1, train_steps=1))
  groups = {k.rsplit('.', 1)[0] for k in known if '.' in k}
  for key in sorted(leaf_keys(cfg)):
    if key in known or any(key.startswith(f'{k}.') for k in known):
      continue
    if key in groups:
      continue  # an emptied group: its missing keys take the code's defaults
    near = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f'did you mean {near[0]}?' if near else 'see eiw_jax/config_lib.py for the keys'
    raise UserError(f'unknown config key {key}; {hint}')


def validate_run(cfg) -> None:
  """Checks the keys and the model/optim/train/data values of a training config (UserError)."""
  check_keys(cfg)
  validate(cfg)  # the model's values first: the Shuffle's rates below depend on them
  t, o = cfg.train, cfg.optim
  for key in ('num_steps', 'log_every', 'eval_every', 'checkpoint_every', 'keep_checkpoints',
              'max_nonfinite_steps', 'eval_examples', 'num_samples'):
    if not isinstance(t[key], int) or t[key] < 1:
      raise UserError(f'train.{key} must be an integer >= 1, got {t[key]!r}; '
                      f'set --config.train.{key}')
  if not t.get('max_minutes', 0.0) >= 0:
    raise UserError(f'train.max_minutes must be >= 0 (0: no limit), got {t.max_minutes!r}; '
                    'set --config.train.max_minutes')
  augment.check(cfg.data.get('augment', 'none'))
  if not cfg.data.batch_size >= 1:
    raise UserError(f'data.batch_size must be >= 1, got {cfg.data.batch_size}; '
                    'set --config.data.batch_size')
  if o.name not in ('adam', 'adamax'):
    raise UserError(f"optim.name must be 'adam' or 'adamax', got {o.name!r}; "
                    "set --config.optim.name=adamax")
  if not 0 < o.lr < float('inf'):
    raise UserError(f'optim.lr must be > 0 and finite, got {o.lr}; set --config.optim.lr=1e-3')
  for key in ('b1', 'b2', 'ema_decay'):
    if not 0 <= o[key] < 1:
      raise UserError(f'optim.{key} must be in [0, 1), got {o[key]}; set --config.optim.{key}')
  for key in ('warmup_steps', 'grad_clip', 'shuffle_freeze_after', 'finetune_after'):
    if not o[key] >= 0:
      raise UserError(f'optim.{key} must be >= 0, got {o[key]}; set --config.optim.{key}')
  if not o.finetune_lr > 0:
    raise UserError(f'optim.finetune_lr must be > 0, got {o.finetune_lr}; '
                    'set --config.optim.finetune_lr=2e-5')
  check_shuffle_rates(cfg)


def check_shuffle_rates(cfg) -> None:
  """Refuses Shuffle rates whose SGD step would overshoot (and so oscillate or diverge).

  Near its fixed point the solver's logits close a fraction ~ w * shuffle_lr / 4 of
  their gap to the guider per step, w = lambda (kl_units='nats') or lambda D ln 2
  ('bpd'); the oracle's moving average a fraction oracle_rate.
  """
  o, m = cfg.optim, cfg.model
  if o.shuffle_optimizer not in ('sgd', 'shared'):
    raise UserError(f"optim.shuffle_optimizer must be 'sgd' or 'shared', got "
                    f"{o.shuffle_optimizer!r}; set --config.optim.shuffle_optimizer=sgd")
  if o.shuffle_optimizer != 'sgd':
    return
  if not 0 < o.oracle_rate <= 1:
    raise UserError(f'optim.oracle_rate must be in (0, 1], got {o.oracle_rate}; '
                    'set --config.optim.oracle_rate=0.01')
  if not o.guider_lr > 0:
    raise UserError(f'optim.guider_lr must be > 0, got {o.guider_lr}; '
                    'set --config.optim.guider_lr=1e-2')
  if not o.shuffle_lr > 0:
    raise UserError(f'optim.shuffle_lr must be > 0, got {o.shuffle_lr}; '
                    'set --config.optim.shuffle_lr=20')
  d = cfg.data
  weight = m.kl_weight * kl_scale(d.image_size * d.image_size * d.channels, m.kl_units)
  if weight * o.shuffle_lr / 4 >= 1:
    raise UserError(
        f'the solver\'s SGD step overshoots: lambda (in {m.kl_units}) * optim.shuffle_lr / 4 = '
        f'{weight * o.shuffle_lr / 4:.3g} >= 1; set --config.optim.shuffle_lr below '
        f'{4 / weight:.3g}')


def denseflow_base(*, name: str, image_size: int, batch_size: int, train_steps: int,
                   channels: int = 3, num_scales: int = 3) -> ml_collections.ConfigDict:
  """The paper's model: DenseFlow-74-10 with the Shuffle at its transitions."""
  cfg = base_config(name=name, image_size=image_size, channels=channels,
                    batch_size=batch_size, train_steps=train_steps)
  cfg.model = denseflow_config(num_scales=num_scales)
  return cfg


def ffjord_base(*, name: str, image_size: int, channels: int, batch_size: int,
                train_steps: int, num_scales: int, **ffjord) -> ml_collections.ConfigDict:
  """A multi-scale FFJORD with the Shuffle at its transitions (the paper's Table 6,
  CNF column): lambda = 1e-4, Table 6's best for continuous flows; `ffjord` overrides
  model.ffjord's keys (eiw_jax/ffjord.py)."""
  cfg = base_config(name=name, image_size=image_size, channels=channels,
                    batch_size=batch_size, train_steps=train_steps)
  cfg.model = ffjord_config(num_scales=num_scales, kl_weight=1e-4)
  cfg.model.ffjord.update(ffjord)
  return cfg


def split_variant(arg, backbone: str):
  """('ffjord_smoke', 'ffjord') -> (True, 'smoke'); ('smoke', 'ffjord') -> (False, 'smoke'):
  whether a config argument names the `backbone` variant, and the rest of it."""
  arg = arg or ''
  if arg == backbone or arg.startswith(backbone + '_'):
    return True, arg[len(backbone) + 1:]
  return False, arg


def paper_training(cfg, *, train_size: int, epochs: int, finetune_epochs: int,
                   augment: str, iw_samples: int) -> None:
  """DenseFlow's recipe in place: `epochs` at optim.lr, then `finetune_epochs` at 2e-5.

  An epoch is train_size // batch_size steps (the pipeline drops the incomplete
  last batch). Evaluation (eval.py --mode=bpd) also reports the importance-weighted
  bound with `iw_samples` dequantization draws.
  """
  per_epoch = train_size // cfg.data.batch_size
  cfg.train.num_steps = (epochs + finetune_epochs) * per_epoch
  cfg.optim.update(finetune_after=epochs * per_epoch, finetune_lr=2e-5)
  cfg.data.augment = augment
  cfg.eval.iw_samples = iw_samples


def tiny_denseflow(cfg, *, units=(2, 2, 1), modules=(1, 1, 1), hidden=8, depth=1,
                   dense_growth=4, growth=2, dequant_hidden=8) -> None:
  """Shrinks a DenseFlow config in place (same structure, tiny widths)."""
  d = cfg.model.denseflow
  d.units, d.modules, d.growth = list(units), list(modules), growth
  d.net.update(hidden=hidden, depth=depth, dense_growth=dense_growth, embed=4)
  d.dequant.update(num_steps=1, hidden=dequant_hidden, depth=1, growth=dequant_hidden,
                   context_channels=dequant_hidden, context_depth=1,
                   context_growth=dequant_hidden // 2)


def denseflow_small(cfg) -> None:
  """`:small` for the DenseFlow configs: a narrow DenseFlow that trains on 2 CPU cores."""
  tiny_denseflow(cfg, units=(2, 2, 1), modules=(2, 2, 4), hidden=24, depth=2,
                 dense_growth=16, growth=4, dequant_hidden=16)
  cfg.data.batch_size = 16
  cfg.optim.warmup_steps = 200
  if cfg.optim.finetune_after:
    cfg.optim.finetune_after = 1900  # the last 5% fine-tuned, as DenseFlow on CIFAR-10
  cfg.train.update(num_steps=2000, log_every=50, eval_every=1000, checkpoint_every=500,
                   eval_examples=256)
  if cfg.eval.iw_samples:
    cfg.eval.iw_samples = 8  # a CPU-friendly k


def glow_small(cfg) -> None:
  """`:small` for the 28x28 configs (the demo): K = 2 scales of 6 Glow steps, width 96,
  with Glow's learned split prior and base, which train faster than the paper's fixed
  N(0, I) at this size (test bits/dim 4.70 against 5.12 after 1000 steps).

  Its 12 steps are unrolled (`scan=False`): the training step ran in 0.87x the time of
  the scanned one (159.6 against 184.7 ms, 7 interleaved rounds on a 2-core Xeon), as
  the scan's stacking of residuals and its buffers cost more than a model this small
  gains from compiling each step once.

  It trains for up to 10000 steps, so that `make demo`'s 20 minutes
  (`train.max_minutes`), not the step count, end it on a CPU: a 2-core Xeon runs
  about 7 steps/s, and stopped at 5000 steps after 12 minutes."""
  cfg.model.update(num_steps=6, hidden=96, split_prior='conditional', learned_base=True,
                   scan=False)
  cfg.data.batch_size = 64
  cfg.optim.update(lr=5e-4, warmup_steps=300)  # 1e-3 spikes at this size and batch
  cfg.train.update(num_steps=10_000, log_every=50, eval_every=1000, checkpoint_every=500,
                   eval_examples=2000)


def smoke(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A tiny model and a few steps: for tests and CI (seconds on a CPU)."""
  cfg.model.update(num_steps=1, hidden=8, shuffle_reduction=4, dequant_steps=1, dequant_hidden=8)
  if cfg.model.backbone == 'ffjord':
    cfg.model.ffjord.update(blocks=1, hidden=8, layers=2, rtol=1e-3, atol=1e-3)
  if cfg.model.backbone == 'denseflow':
    k = cfg.model.num_scales
    tiny_denseflow(cfg, units=(2,) * (k - 1) + (1,), modules=(1,) * k)
  cfg.data.batch_size = 8
  cfg.optim.warmup_steps = 2
  if cfg.optim.finetune_after:
    cfg.optim.finetune_after = 3  # the last of the 4 steps is fine-tuned
  cfg.train.update(num_steps=4, log_every=2, eval_every=4, checkpoint_every=2, eval_examples=16,
                   num_samples=4)
  cfg.eval.update(batch_size=8, num_examples=16, num_samples=4, num_pairs=2,
                  interpolation_steps=3, entropy_examples=16, channels_top=2, speed_batch_size=4,
                  speed_iters=1, fid_num_samples=16)
  if cfg.eval.iw_samples:
    cfg.eval.iw_samples = 2
  return cfg


def apply_variant(cfg, arg: str, small=None) -> ml_collections.ConfigDict:
  """Applies the `:smoke` or `:small` variant named by the config argument."""
  if arg in (None, ''):
    return cfg
  if arg == 'smoke':
    return smoke(cfg)
  if arg == 'small' and small is not None:
    small(cfg)
    return cfg
  raise ValueError(f"unknown config variant {arg!r}; use ':smoke' or ':small'")
