"""CelebA, 64x64x3 (8 bits; --config.data.num_bits=5 for the 5-bit protocol): the paper's
model, DenseFlow-74-10 (units [6, 4, 1], modules [5, 6, 20], growth 10) with the Shuffle
at its two transitions; K = 3 scales, lambda = 1e-3, variational dequantization, Adamax
lr 1e-3 with 5000 warm-up steps, batch 32 (DESIGN §2). Paper (Table 2): EIW-Flow 1.96
bits/dim.

Training is DenseFlow's recipe (its README): 50 epochs at lr 1e-3, then 5 more at
2e-5 (55 in all), with horizontal flips (data.augment='flip'). An epoch of the
162,770 training images is 162,770 // 32 = 5,086 steps, so finetune_after =
50 * 5,086 = 254,300 and num_steps = 55 * 5,086 = 279,730. eval.py --mode=bpd
reports the single-draw bound and the importance-weighted one with k = 200
dequantization draws (DenseFlow's evaluation on CelebA).

`:small` is a narrow DenseFlow (same structure) that trains on 2 CPU cores
(2000 steps, the last 100 fine-tuned, k = 8); `:smoke` a tiny one for tests.
"""
from eiw_jax.train import recipes


def get_config(arg=None):
  cfg = recipes.denseflow_base(name='celeba', image_size=64, batch_size=32,
                                  train_steps=1)
  recipes.paper_training(cfg, train_size=162_770, epochs=50, finetune_epochs=5,
                            augment='flip', iw_samples=200)
  return recipes.apply_variant(cfg, arg, recipes.denseflow_small)
