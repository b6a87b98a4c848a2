"""The flow's learning-rate schedule: linear warm-up, a constant rate, then an
optional fine-tuning phase at a lower constant rate (DESIGN §2).

    lr(t) = optim.lr * min(1, (t + 1) / warmup_steps)     t < finetune_after
    lr(t) = optim.finetune_lr                              t >= finetune_after

t counts the optimiser's updates (the training step, less any non-finite steps,
which leave the optimiser state unchanged); it lives in the optimiser state, so a
resumed run crosses the boundary at the same update as an uninterrupted one.
`finetune_after = 0` (the default) never fine-tunes.

DenseFlow's recipe (its README's commands): Adamax at 1e-3 with 5000 warm-up
iterations, then a second run that resumes the checkpoint, optimiser state
included, at 2e-5 for about 5% (CIFAR-10: 400 -> 420 epochs) or 10% (ImageNet,
CelebA) more epochs. Its per-epoch exponential decay (`--gamma`) touches only the
first iteration of each epoch: the warm-up scheduler, stepped after every
iteration, sets the rate back to base_lr * min(1, t / warmup). So the rate is
constant after warm-up until the fine-tuning, as here.
"""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp


def flow_lr_schedule(optim) -> Callable:
  """The schedule for the flow's optimiser from `config.optim` (see module doc)."""
  lr, warmup = optim.lr, max(int(optim.warmup_steps), 1)
  after = int(optim.finetune_after)
  finetune_lr = optim.finetune_lr

  def schedule(step):
    rate = lr * jnp.minimum(1.0, (step + 1) / warmup)
    if after <= 0:
      return rate
    return jnp.where(step < after, rate, finetune_lr)

  return schedule
