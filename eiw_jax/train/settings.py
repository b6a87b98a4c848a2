"""The `train` group's keys and the checks of the `train` and `optim` values (the
optimiser's own keys are train/optimizer.py's)."""
from __future__ import annotations

from eiw_jax.errors import UserError
from eiw_jax.losses import kl_scale

OPTIMIZERS = ('adam', 'adamax')
SHUFFLE_OPTIMIZERS = ('sgd', 'shared')


def defaults(train_steps: int) -> dict:
  """The `config.train` keys."""
  return dict(
      num_steps=train_steps, log_every=100, eval_every=5000, checkpoint_every=1000,
      keep_checkpoints=3, seed=0, eval_examples=1000, num_samples=64, sample_temperature=0.8,
      max_nonfinite_steps=20,   # stop after this many non-finite steps in a row
      distributed=False,        # jax.distributed.initialize() (multi-host TPU / GPU)
      coordinator_address='',   # with distributed: 'host:port' of process 0; '' = JAX detects
      num_processes=0,          # with coordinator_address: the number of processes
      process_id=-1,            # with coordinator_address: this process, 0 .. num_processes-1
      heartbeat_timeout_s=100,  # with distributed: a silent process counts as dead after this
      max_minutes=0.0,          # stop (eval + save) at the first logged step after this; 0 = off
      init_from='',             # a run's workdir: start from its flow (train/init_from.py)
      restart=False,            # start over where the checkpoints are gone (history.py)
  )


def check(cfg) -> None:
  """Refuses bad `train` and `optim` values (UserError, one line). The model's values
  are checked first (builder.validate): the Shuffle's rates depend on them."""
  t, o = cfg.train, cfg.optim
  for key in ('num_steps', 'log_every', 'eval_every', 'checkpoint_every', 'keep_checkpoints',
              'max_nonfinite_steps', 'eval_examples', 'num_samples'):
    if not isinstance(t[key], int) or t[key] < 1:
      raise UserError(f'train.{key} must be an integer >= 1, got {t[key]!r}; '
                      f'set config.train.{key}')
  check_seed(t.seed, '--config.train.seed')
  if not t.max_minutes >= 0:
    raise UserError(f'train.max_minutes must be >= 0 (0: no limit), got {t.max_minutes!r}; '
                    'set config.train.max_minutes')
  if not isinstance(t.init_from, str):
    raise UserError(f'train.init_from must be a workdir path, got {t.init_from!r}; '
                    'set config.train.init_from=<workdir>')
  check_optim(o)
  check_shuffle_rates(cfg)


def check_optim(o) -> None:
  """Refuses bad `optim` values that need no model to judge (UserError, one line)."""
  if o.name not in OPTIMIZERS:
    raise UserError(f"optim.name must be 'adam' or 'adamax', got {o.name!r}; "
                    "set config.optim.name=adamax")
  if not 0 < o.lr < float('inf'):
    raise UserError(f'optim.lr must be > 0 and finite, got {o.lr}; set config.optim.lr=1e-3')
  for key in ('b1', 'b2', 'ema_decay'):
    if not 0 <= o[key] < 1:
      raise UserError(f'optim.{key} must be in [0, 1), got {o[key]}; set config.optim.{key}')
  for key in ('warmup_steps', 'grad_clip', 'shuffle_freeze_after', 'finetune_after'):
    if not o[key] >= 0:
      raise UserError(f'optim.{key} must be >= 0, got {o[key]}; set config.optim.{key}')
  if not o.finetune_lr > 0:
    raise UserError(f'optim.finetune_lr must be > 0, got {o.finetune_lr}; '
                    'set config.optim.finetune_lr=2e-5')


SEED_LIMIT = 2**63  # numpy's and JAX's seeds are int64


def check_seed(seed, flag: str) -> None:
  """Refuses a seed that is not an integer in 0 .. 2**63 - 1 (UserError)."""
  if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
    raise UserError(f'the seed must be an integer in 0..{SEED_LIMIT - 1}, got {seed!r}; '
                    f'set {flag}=0 (or another seed in that range)')


def check_shuffle_rates(cfg) -> None:
  """Refuses Shuffle rates whose SGD step would overshoot (and so oscillate or diverge).

  Near its fixed point the solver's logits close a fraction ~ w * shuffle_lr / 4 of
  their gap to the guider per step, w = lambda (kl_units='nats') or lambda D ln 2
  ('bpd'); the oracle's moving average a fraction oracle_rate.
  """
  o, m = cfg.optim, cfg.model
  if o.shuffle_optimizer not in SHUFFLE_OPTIMIZERS:
    raise UserError(f"optim.shuffle_optimizer must be 'sgd' or 'shared', got "
                    f"{o.shuffle_optimizer!r}; set config.optim.shuffle_optimizer=sgd")
  if o.shuffle_optimizer != 'sgd':
    return
  if not 0 < o.oracle_rate <= 1:
    raise UserError(f'optim.oracle_rate must be in (0, 1], got {o.oracle_rate}; '
                    'set config.optim.oracle_rate=0.01')
  if not o.guider_lr > 0:
    raise UserError(f'optim.guider_lr must be > 0, got {o.guider_lr}; '
                    'set config.optim.guider_lr=1e-2')
  if not o.shuffle_lr > 0:
    raise UserError(f'optim.shuffle_lr must be > 0, got {o.shuffle_lr}; '
                    'set config.optim.shuffle_lr=20')
  d = cfg.data
  weight = m.kl_weight * kl_scale(d.image_size * d.image_size * d.channels, m.kl_units)
  if weight * o.shuffle_lr / 4 >= 1:
    raise UserError(
        f'the solver\'s SGD step overshoots: lambda (in {m.kl_units}) * optim.shuffle_lr / 4 = '
        f'{weight * o.shuffle_lr / 4:.3g} >= 1; set config.optim.shuffle_lr below '
        f'{4 / weight:.3g}')
