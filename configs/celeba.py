"""CelebA, 64x64x3 (8 bits; --config.data.num_bits=5 gives the 5-bit protocol): K = 3 scales
of N = 6 steps, lambda = 1e-3, batch 32, lr 1e-3 with linear warm-up (paper §6.1). Paper (Table 2): EIW-Flow 1.96 bits/dim
(DenseFlow-74-10 backbone, 50 epochs, variational dequantization).
"""
from eiw_jax import config_lib


def _small(cfg):
  cfg.model.update(num_steps=2, hidden=64)
  cfg.data.batch_size = 32
  cfg.optim.warmup_steps = 200
  cfg.train.update(num_steps=2000, log_every=50, eval_every=1000, checkpoint_every=500,
                   eval_examples=500)


def get_config(arg=None):
  cfg = config_lib.base_config(name='celeba', image_size=64, channels=3, batch_size=32,
                               train_steps=1_000_000, num_scales=3, num_steps=6,
                               dequantizer='variational')
  return config_lib.apply_variant(cfg, arg, _small)
