"""ImageNet64 (downsampled ImageNet), 64x64x3: the paper's model, DenseFlow-74-10
(units [6, 4, 1], modules [5, 6, 20], growth 10) with the Shuffle at its two
transitions; K = 3 scales, lambda = 1e-3, variational dequantization, Adamax lr 1e-3
with 5000 warm-up steps, batch 32 (DESIGN §2). Paper (Table 2): EIW-Flow 3.35 bits/dim.

Training is DenseFlow's recipe (its README): 10 epochs at lr 1e-3, then 1 more at
2e-5 (11 in all), with horizontal flips and translations by up to 4%
(data.augment='flip_translate'). An epoch is 1,281,167 // 32 = 40,036 steps, so
finetune_after = 10 * 40,036 = 400,360 and num_steps = 11 * 40,036 = 440,396.
eval.py --mode=bpd reports the single-draw bound and the importance-weighted one
with k = 200 dequantization draws (DenseFlow's evaluation on ImageNet).

`:small` is a narrow DenseFlow (same structure) that trains on 2 CPU cores
(2000 steps, the last 100 fine-tuned, k = 8); `:smoke` a tiny one for tests.
"""
from eiw_jax.train import recipes


def get_config(arg=None):
  cfg = recipes.denseflow_base(name='imagenet64', image_size=64, batch_size=32,
                                  train_steps=1)
  recipes.paper_training(cfg, train_size=1_281_167, epochs=10, finetune_epochs=1,
                            augment='flip_translate', iw_samples=200)
  return recipes.apply_variant(cfg, arg, recipes.denseflow_small)
