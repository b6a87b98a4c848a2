"""The optimiser recipe of a run: the flow's Adam(ax) with warm-up and fine-tuning, and
the Shuffle's own optimisers for the parameters shuffle.param_labels marks.

The `optim` group's keys and defaults (`defaults()`) are this module's; their
checks are in eiw_jax.train.settings. `optimizer(config)` is the recipe as the
public API gives it (`eiw_jax.optimizer`, loaded on first use so that
`import eiw_jax` imports no optax)."""
from __future__ import annotations

from typing import Any, Optional

import jax.numpy as jnp
import ml_collections
import optax

from eiw_jax import shuffle
from eiw_jax.errors import UserError, refuse_unknown
from eiw_jax.train import settings
from eiw_jax.train.schedule import flow_lr_schedule


def defaults() -> dict:
  """The `config.optim` keys: DenseFlow's Adamax recipe and the Shuffle's own rates."""
  return dict(
      name='adamax',        # DenseFlow's optimiser; 'adam' is the paper's wording
      lr=1e-3, warmup_steps=5000, b1=0.9, b2=0.999,
      finetune_after=0,     # from this step on the flow's rate is finetune_lr; 0 = never
      finetune_lr=2e-5,     # DenseFlow's fine-tuning rate (eiw_jax/train/schedule.py)
      grad_clip=0.0,        # global-norm clipping; 0 = off
      ema_decay=0.0,        # EMA of the parameters (used for eval when > 0); 0 = off
      shuffle_optimizer='sgd',  # the solver / oracle statistics: own SGD ('sgd') or 'shared'
      shuffle_lr=20.0,      # the solver's SGD rate: Q relaxes to P in ~4/(lambda*shuffle_lr) steps
      guider_lr=1e-2,       # the guider's own Adam rate (with shuffle_optimizer='sgd')
      oracle_rate=0.01,     # reading 'oracle': the statistics' moving-average rate per step
      shuffle_freeze_after=0,  # fix the permutation after this many steps; 0 = never
  )


def make_optimizer(optim) -> optax.GradientTransformation:
  """Adam or Adamax with linear warm-up to a constant rate, optional global-norm clip,
  and an optional fine-tuning phase at `optim.finetune_lr` (`eiw_jax.train.schedule`).

  With `optim.shuffle_optimizer='sgd'` (the default) the Shuffle's solver and the
  oracle's statistics are updated by plain SGD of their own, at `optim.shuffle_lr`
  and `optim.oracle_rate`, until `optim.shuffle_freeze_after` steps (0: never),
  and the guider by Adam at `optim.guider_lr` (its target moves with the flow, and
  at the flow's rate it would need thousands of steps to learn it).
  Adam and Adamax ignore a gradient's scale, so under them λ could not matter for
  the solver, which sees only λ·KL; under SGD Q's logits relax toward the
  guider's mean P with a time constant of about 4 / (λ · shuffle_lr) steps (a
  normalised solver input at init). 'shared' puts them on the flow's optimiser
  (the behaviour of runs saved before the option existed).
  """
  schedule = flow_lr_schedule(optim)
  if optim.name == 'adamax':
    opt = optax.adamax(schedule, b1=optim.b1, b2=optim.b2)
  elif optim.name == 'adam':
    opt = optax.adam(schedule, b1=optim.b1, b2=optim.b2)
  else:
    raise UserError(f"optim.name must be 'adam' or 'adamax', got {optim.name!r}")
  if optim.shuffle_optimizer == 'sgd':
    freeze = int(optim.shuffle_freeze_after)

    def sgd(rate):
      if freeze <= 0:
        return optax.sgd(rate)
      return optax.sgd(lambda step: jnp.where(step < freeze, rate, 0.0))

    opt = optax.multi_transform(
        {'flow': opt, 'solver': sgd(optim.shuffle_lr), 'oracle': sgd(optim.oracle_rate),
         'guider': optax.adam(optim.guider_lr)},
        shuffle.param_labels)
  if optim.grad_clip > 0:
    opt = optax.chain(optax.clip_by_global_norm(optim.grad_clip), opt)
  return opt


def optimizer(config: Optional[Any] = None, **overrides: Any) -> optax.GradientTransformation:
  """train.py's optimiser, for a training loop of your own (docs/API.md).

  Args:
    config: a run config (its `optim` group is used, missing keys take their
      defaults), a config with only `model` and `data` (the defaults), or None.
    **overrides: `optim` keys, applied last (e.g. `lr=3e-4, warmup_steps=100`).

  Returns:
    An optax transformation of the whole `params` tree: the flow's Adamax with
    warm-up, and (optim.shuffle_optimizer='sgd') the solver's SGD at
    optim.shuffle_lr, the guider's Adam at optim.guider_lr and the oracle's
    moving average, by `shuffle.param_labels`. An unknown key or a bad value is a
    UserError; with `model` and `data` in `config`, so is a solver rate that
    overshoots for that model's λ.
  """
  given = dict(config['optim']) if config is not None and 'optim' in config else {}
  given.update(overrides)
  refuse_unknown(given, defaults(), 'optim key', 'optim.')
  optim = ml_collections.ConfigDict({**defaults(), **given})
  settings.check_optim(optim)
  if config is not None and 'model' in config and 'data' in config:
    settings.check_shuffle_rates(ml_collections.ConfigDict(
        dict(model=dict(config['model']), data=dict(config['data']), optim=optim.to_dict())))
  return make_optimizer(optim)
