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

`:ffjord` is the paper's continuous flow (Table 6, CNF column): a multi-scale FFJORD
with the Shuffle at its two transitions, lambda = 1e-4 (Table 6's best for CNFs),
50 epochs. Paper: 3.4981 bits/dim at lambda = 1e-4 (3.5024 at 1e-3, 3.5097 at
1e-2, 3.5025 at 1e-1). The paper gives no CNF architecture beyond "FFJORD,
multi-scale", so the sizes are FFJORD's own for CIFAR-10: K = 3 scales (32x32x3 ->
16x16x6 -> 8x8x12 after each squeeze and split; no initial squeeze, so the first
CNF sees the image), two CNF blocks per scale, each a dynamics net of three hidden
3x3 convolutions of width 64 (and an output one) with softplus and t concatenated
as a channel to every convolution's input, Dopri5 at rtol = atol = 1e-5,
Rademacher probes, uniform dequantization, Adam at lr 1e-3, batch 200 (an epoch is
50,000 // 200 = 250 steps, 50 epochs 12,500 steps). The paper took about seven days on a Titan V for these 50 epochs.
`:ffjord_smoke` is a tiny one for tests.
"""
from eiw_jax.train import recipes


def get_config(arg=None):
  is_ffjord, arg = recipes.split_variant(arg, 'ffjord')
  if is_ffjord:
    cfg = recipes.ffjord_base(name='cifar10', image_size=32, channels=3, batch_size=200,
                                 train_steps=50 * (50_000 // 200), num_scales=3)
    cfg.optim.update(name='adam', lr=1e-3, warmup_steps=250)  # a one-epoch warm-up
    return recipes.apply_variant(cfg, arg)
  cfg = recipes.denseflow_base(name='cifar10', image_size=32, batch_size=64,
                                  train_steps=1)
  recipes.paper_training(cfg, train_size=50_000, epochs=400, finetune_epochs=20,
                            augment='flip_translate', iw_samples=1000)
  return recipes.apply_variant(cfg, arg, recipes.denseflow_small)
