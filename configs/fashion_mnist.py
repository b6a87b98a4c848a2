"""Fashion-MNIST, 28x28x1, K = 2 scales of N = 6 Glow steps (as the paper's MNIST model).

Reference: Glow with 2x16 couplings reaches 3.14 bits/dim after 80 epochs (DESIGN §3);
the paper reports no Fashion-MNIST number. `:small` is a Glow of width 96 for 2 CPU
cores (the demo's model until 2026-12-06: `make demo DEMO_CONFIG=configs/fashion_mnist.py:small`).
Offline data: Debian's `dataset-fashion-mnist` is used automatically when installed.

`:denseflow` is the paper's MNIST model and schedule (configs/mnist.py) on Fashion-MNIST;
`:denseflow_small` (the `make demo` model) its narrow version for 2 CPU cores, trained
until `make demo` cuts it at 20 minutes (eiw_jax/train/recipes.py: denseflow_demo);
`:denseflow_smoke` a tiny one for tests.

`:ffjord` is a continuous flow sized for 2 CPU cores within the hour: a multi-scale
FFJORD (eiw_jax/ffjord.py) with the Shuffle, lambda = 1e-4 (the paper's Table 6 best
for CNFs), K = 2 scales after an initial squeeze (14x14x4 -> 7x7x8), one CNF block per
scale whose dynamics net has two hidden 3x3 convolutions of width 32, Dopri5 at
rtol = atol = 1e-3 (looser than FFJORD's 1e-5, to keep the number of function
evaluations small), batch 32, Adam at lr 1e-3, 1500 steps. `:ffjord_smoke` is a
tiny one for tests.
"""
from eiw_jax.train import config as config_lib, recipes


def get_config(arg=None):
  is_denseflow, arg = recipes.split_variant(arg, 'denseflow')
  if is_denseflow:
    return recipes.apply_variant(recipes.denseflow_28x28('fashion_mnist'), arg,
                                 recipes.denseflow_demo)
  is_ffjord, arg = recipes.split_variant(arg, 'ffjord')
  if is_ffjord:
    cfg = recipes.ffjord_base(name='fashion_mnist', image_size=28, channels=1,
                                 batch_size=32, train_steps=1500, num_scales=2,
                                 blocks=1, hidden=32, layers=3, rtol=1e-3, atol=1e-3)
    cfg.model.initial_squeeze = True
    cfg.optim.update(name='adam', lr=1e-3, warmup_steps=100)
    cfg.train.update(log_every=50, eval_every=1000, checkpoint_every=500, eval_examples=2000)
    return recipes.apply_variant(cfg, arg)
  cfg = config_lib.base_config(name='fashion_mnist', image_size=28, channels=1, batch_size=64,
                               train_steps=200_000, num_scales=2, num_steps=6)
  return recipes.apply_variant(cfg, arg, recipes.glow_small)
