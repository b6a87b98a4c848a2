"""The small Glow-backbone model both Shuffle experiments train on Fashion-MNIST.

K = 2 scales of 4 Glow steps of width 64 after an initial squeeze, the paper's
fixed N(0, I) split prior, a learned per-channel base for the last latent,
uniform dequantisation, batch 64, Adamax at 5e-4 after 200 warm-up steps: one
transition, u_1 = 7x7x16, so 16 channels or 4 pre-squeeze feature maps, half of
which are factored out.
"""
from __future__ import annotations

import importlib


def ablation_config(dataset: str = 'fashion_mnist', *, seed: int, steps: int, **model):
  """configs/<dataset>.py with the small model; `model` sets the Shuffle's keys."""
  cfg = importlib.import_module(f'configs.{dataset}').get_config()
  cfg.model.update(num_scales=2, num_steps=4, hidden=64, split_prior='standard',
                   learned_base=True, dequantizer='uniform', **model)
  cfg.data.batch_size = 64
  cfg.optim.update(lr=5e-4, warmup_steps=200)
  cfg.train.update(num_steps=steps, seed=seed, log_every=50, eval_every=steps,
                   checkpoint_every=250, keep_checkpoints=2, eval_examples=1000,
                   num_samples=16)
  cfg.eval.update(batch_size=500, num_examples=0, entropy_examples=1000)
  return cfg
