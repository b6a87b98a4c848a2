"""Shared config defaults for configs/*.py. Four groups: model, data, optim, train
(plus eval, the options of eval.py's modes). Every key can be overridden on the
command line (`--config.optim.lr=3e-4`); an unknown key is an error.
"""
from __future__ import annotations

import ml_collections

from eiw_jax.builder import model_config


def base_config(*, name: str, image_size: int, channels: int, batch_size: int,
                train_steps: int, **model) -> ml_collections.ConfigDict:
  """A full config for dataset `name` with the paper's training defaults."""
  cfg = ml_collections.ConfigDict()
  cfg.model = model_config(**model)
  cfg.data = ml_collections.ConfigDict(dict(
      name=name, source='auto', dir='', download=False, image_size=image_size,
      channels=channels, num_bits=8, batch_size=batch_size, num_synthetic=512))
  cfg.optim = ml_collections.ConfigDict(dict(
      name='adamax',        # DenseFlow's optimiser; 'adam' is the paper's wording
      lr=1e-3, warmup_steps=5000, b1=0.9, b2=0.999,
      grad_clip=0.0,        # global-norm clipping; 0 = off
      ema_decay=0.0,        # EMA of the parameters (used for eval when > 0); 0 = off
  ))
  cfg.train = ml_collections.ConfigDict(dict(
      num_steps=train_steps, log_every=100, eval_every=5000, checkpoint_every=1000,
      keep_checkpoints=3, seed=0, eval_examples=1000, num_samples=64, sample_temperature=0.8,
      max_nonfinite_steps=20,   # stop after this many non-finite steps in a row
      distributed=False,        # jax.distributed.initialize() (multi-host TPU / GPU)
  ))
  cfg.eval = ml_collections.ConfigDict(dict(
      batch_size=256, num_examples=0, iw_samples=0,
      temperatures=[0.0, 0.5, 0.7, 0.8, 0.9, 1.0], num_samples=64, num_pairs=4,
      interpolation_steps=8, manipulate_positive=1, manipulate_negative=0,
      entropy_examples=1000, channels_top=10, speed_batch_size=0, speed_iters=5,
      fid_num_samples=10000))
  return cfg


def smoke(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A tiny model and a few steps: for tests and CI (seconds on a CPU)."""
  cfg.model.update(num_steps=1, hidden=8, shuffle_reduction=4, dequant_steps=1, dequant_hidden=8)
  cfg.data.batch_size = 8
  cfg.optim.warmup_steps = 2
  cfg.train.update(num_steps=4, log_every=2, eval_every=4, checkpoint_every=2, eval_examples=16,
                   num_samples=4)
  cfg.eval.update(batch_size=8, num_examples=16, num_samples=4, num_pairs=2,
                  interpolation_steps=3, entropy_examples=16, channels_top=2, speed_batch_size=4,
                  speed_iters=1, fid_num_samples=16)
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
