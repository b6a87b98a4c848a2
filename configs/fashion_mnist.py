"""Fashion-MNIST, 28x28x1, K = 2 scales of N = 6 Glow steps (as the paper's MNIST model).

Reference: Glow with 2x16 couplings reaches 3.14 bits/dim after 80 epochs (DESIGN §3);
the paper reports no Fashion-MNIST number. `:small` (the `make demo` model) trains
on 2 CPU cores in about 30 minutes; the README lists what it reached.
Offline data: Debian's `dataset-fashion-mnist` is used automatically when installed.
"""
from eiw_jax import config_lib


def get_config(arg=None):
  cfg = config_lib.base_config(name='fashion_mnist', image_size=28, channels=1, batch_size=64,
                               train_steps=200_000, num_scales=2, num_steps=6)
  return config_lib.apply_variant(cfg, arg, config_lib.glow_small)
