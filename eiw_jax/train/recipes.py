"""Config recipes for configs/*.py: the paper's backbones and training schedule, and
the `:small` and `:smoke` variants (eiw_jax.config holds the schema and checks)."""
from __future__ import annotations

import ml_collections

from eiw_jax.builder import model_config
from eiw_jax.train.config import base_config


def denseflow_base(*, name: str, image_size: int, batch_size: int, train_steps: int,
                   channels: int = 3, num_scales: int = 3) -> ml_collections.ConfigDict:
  """The paper's model: DenseFlow-74-10 with the Shuffle at its transitions."""
  cfg = base_config(name=name, image_size=image_size, channels=channels,
                    batch_size=batch_size, train_steps=train_steps)
  cfg.model = model_config(backbone='denseflow', num_scales=num_scales)
  return cfg


def ffjord_base(*, name: str, image_size: int, channels: int, batch_size: int,
                train_steps: int, num_scales: int, **ffjord) -> ml_collections.ConfigDict:
  """A multi-scale FFJORD with the Shuffle at its transitions (the paper's Table 6,
  CNF column): lambda = 1e-4, Table 6's best for continuous flows; `ffjord` overrides
  model.ffjord's keys (eiw_jax/ffjord.py)."""
  cfg = base_config(name=name, image_size=image_size, channels=channels,
                    batch_size=batch_size, train_steps=train_steps)
  cfg.model = model_config(backbone='ffjord', num_scales=num_scales, kl_weight=1e-4)
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


def denseflow_28x28(name: str) -> ml_collections.ConfigDict:
  """The paper's MNIST settings (configs/mnist.py's docstring gives the reasons) for a
  28x28 gray dataset: K = 2, units [6, 1], modules [5, 20], 7 Nystrom landmarks,
  100 + 5 epochs of 60,000 images at batch 64, k = 1000 IW draws."""
  cfg = denseflow_base(name=name, image_size=28, batch_size=64, train_steps=1, channels=1,
                       num_scales=2)
  d = cfg.model.denseflow
  d.units, d.modules = [6, 1], [5, 20]
  d.net.num_landmarks = 7
  paper_training(cfg, train_size=60_000, epochs=100, finetune_epochs=5, augment='none',
                 iw_samples=1000)
  return cfg


def denseflow_28x28_small(cfg) -> None:
  """`:small` of configs/mnist.py: units [2, 1], modules [2, 4], coupling width 24,
  batch 16, 2000 steps (the last 100 fine-tuned)."""
  denseflow_small(cfg)
  tiny_denseflow(cfg, units=(2, 1), modules=(2, 4), hidden=24, depth=2, dense_growth=16,
                 growth=4, dequant_hidden=16)


def denseflow_demo(cfg) -> None:
  """The `make demo` model (configs/fashion_mnist.py:denseflow_small): the 28x28 `:small`
  DenseFlow at Adamax lr 1e-3 without fine-tuning, for up to 200,000 steps, so that
  `make demo`'s 20 minutes (`train.max_minutes`), not the step count, end it on a CPU
  (a 2-core Xeon runs about 9 steps/s). Chosen over the Glow `:small` by what each
  learns in those 20 minutes on Fashion-MNIST (README, "What `make demo` gives")."""
  denseflow_28x28_small(cfg)
  cfg.optim.finetune_after = 0
  cfg.train.update(num_steps=200_000, eval_every=2000, eval_examples=2000)


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
