"""CIFAR-10, 32x32x3: the paper's model, DenseFlow-74-10 (units [6, 4, 1], modules
[5, 6, 20], growth 10) with the Shuffle at its two transitions; K = 3 scales,
lambda = 1e-3, variational dequantization, Adamax lr 1e-3 with 5000 warm-up steps,
batch 64 (DESIGN §2). Paper (Table 2): EIW-Flow 2.97 bits/dim.

Training is DenseFlow's recipe (its README): 400 epochs at lr 1e-3, then 20 more
at 2e-5 (420 in all), with horizontal flips and translations by up to 4%
(data.augment='flip_translate'). An epoch is 50,000 // 64 = 781 steps, so
finetune_after = 400 * 781 = 312,400 and num_steps = 420 * 781 = 328,020.
eval.py --mode=bpd reports the single-draw bound and the importance-weighted one
with k = 1,000 dequantization draws (DenseFlow's evaluation on CIFAR-10).

`:small` is a narrow DenseFlow (same structure) that trains on 2 CPU cores
(2000 steps, the last 100 fine-tuned, k = 8); `:smoke` a tiny one for tests.
"""
from eiw_jax import config_lib


def get_config(arg=None):
  cfg = config_lib.denseflow_base(name='cifar10', image_size=32, batch_size=64,
                                  train_steps=1)
  config_lib.paper_training(cfg, train_size=50_000, epochs=400, finetune_epochs=20,
                            augment='flip_translate', iw_samples=1000)
  return config_lib.apply_variant(cfg, arg, config_lib.denseflow_small)
