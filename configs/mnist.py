"""MNIST, 28x28x1: the paper's settings for MNIST (§6.2: "K = 2 ... the other
hyperparameters and settings are the same as the other three datasets"), so the
DenseFlow backbone with the Shuffle at its one transition, variational
dequantization, lambda = 1e-3, Adamax lr 1e-3 with 5000 warm-up steps, batch 64.
Paper (Table 3): EIW-Flow 0.89 bits/dim (Glow 1.05, RealNVP 1.06, Residual Flow 0.97).

How 28x28 meets the scales: the initial squeeze gives 14x14x4, the one transition
7x7; K = 2 needs 28 divisible by 2^2 only, so there is no padding and bits/dim is
over the 784 real pixels, comparable with Table 3. (K = 3 would need 28 divisible
by 8, i.e. padding to 32x32; the 240 constant padding pixels cost the flow almost
nothing, so bits/dim over 1024 dims would read lower than the paper's.) Nystrom
attention splits the tokens into landmark segments: 196 and 49 tokens need
num_landmarks = 7 (4 elsewhere). The paper gives no MNIST block structure; this
takes DenseFlow-74-10's first and last scale, units [6, 1] and modules [5, 20]
(50 modules, growth 10: 4 -> 54 channels at 14x14, 108 at 7x7).

Training (the paper gives no MNIST length; this is a choice): 100 epochs at
lr 1e-3, then 5 at 2e-5, no augmentation (a flipped digit is another image). An
epoch is 60,000 // 64 = 937 steps, so finetune_after = 100 * 937 = 93,700 and
num_steps = 105 * 937 = 98,385. eval.py --mode=bpd reports the single-draw bound
and the importance-weighted one with k = 1,000 draws (as CIFAR-10).

`:small` is a narrow DenseFlow of the same structure that trains on 2 CPU cores
(2000 steps, the last 100 fine-tuned, k = 8); `:smoke` a tiny one for tests.
"""
from eiw_jax.train import recipes


def get_config(arg=None):
  return recipes.apply_variant(recipes.denseflow_28x28('mnist'), arg,
                               recipes.denseflow_28x28_small)
