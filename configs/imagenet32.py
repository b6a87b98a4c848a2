"""imagenet32, 32x32x3: the paper's model, DenseFlow-74-10 (units [6, 4, 1], modules
[5, 6, 20], growth 10) with the Shuffle at its two transitions; K = 3 scales,
lambda = 1e-3, variational dequantization, Adamax lr 1e-3 with 5000 warm-up steps,
batch 64 (DESIGN §2). Paper (Table 2): EIW-Flow 3.62 bits/dim after 20 epochs.

`:small` is a narrow DenseFlow (same structure) that trains on 2 CPU cores;
`:smoke` a tiny one for tests.
"""
from eiw_jax import config_lib


def _small(cfg):
  config_lib.tiny_denseflow(cfg, units=(2, 2, 1), modules=(2, 2, 4), hidden=24, depth=2,
                            dense_growth=16, growth=4, dequant_hidden=16)
  cfg.data.batch_size = 16
  cfg.optim.warmup_steps = 200
  cfg.train.update(num_steps=2000, log_every=50, eval_every=1000, checkpoint_every=500,
                   eval_examples=256)


def get_config(arg=None):
  cfg = config_lib.denseflow_base(name='imagenet32', image_size=32, batch_size=64,
                                  train_steps=400_000)
  return config_lib.apply_variant(cfg, arg, _small)
