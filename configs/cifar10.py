"""cifar10, 32x32x3: the paper's model, DenseFlow-74-10 (units [6, 4, 1], modules
[5, 6, 20], growth 10) with the Shuffle at its two transitions; K = 3 scales,
lambda = 1e-3, variational dequantization, Adamax lr 1e-3 with 5000 warm-up steps,
batch 64 (DESIGN §2). Paper (Table 2): EIW-Flow 2.97 bits/dim after 400 epochs.

`:small` is a narrow DenseFlow (same structure) that trains on 2 CPU cores;
`:smoke` a tiny one for tests.
"""
from eiw_jax import config_lib


def get_config(arg=None):
  cfg = config_lib.denseflow_base(name='cifar10', image_size=32, batch_size=64,
                                  train_steps=1_000_000)
  return config_lib.apply_variant(cfg, arg, config_lib.denseflow_small)
