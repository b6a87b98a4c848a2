"""MNIST, 28x28x1, K = 2 scales of N = 6 steps (paper §6.2: EIW-Flow 0.89 bits/dim;
Glow 1.05, RealNVP 1.06, Residual Flow 0.97)."""
from eiw_jax import config_lib


def get_config(arg=None):
  cfg = config_lib.base_config(name='mnist', image_size=28, channels=1, batch_size=64,
                               train_steps=200_000, num_scales=2, num_steps=6)
  return config_lib.apply_variant(cfg, arg, config_lib.glow_small)
