"""Eval mode `reconstruct`: x_hat = f^-1(f(x)) on test images (paper §7.3, Fig. 9).

Works in the continuous space the flow sees: y = eiw_jax.to_continuous(x, b)
(bin centres, no dequantization noise), y_hat = decode(encode(y)); reports the
max and mean absolute error over all evaluated pixels, and a PNG whose first row
holds originals and second row their (discretised) reconstructions.
"""
from __future__ import annotations

import os

import numpy as np

from eiw_jax.evaluation import common
from eiw_jax.evaluation.images import save_rows
from eiw_jax.model import to_continuous, to_discrete

_SHOWN = 16


def run(ctx) -> dict:
  model = ctx.model
  images = common.split_images(ctx)
  bs = common.option(ctx, 'batch_size')
  flat = common.encode_images(ctx, images, bs)
  y_hat = common.decode_latents(ctx, flat, bs).astype(np.float64)
  y = np.asarray(to_continuous(images, model.num_bits), np.float64)
  err = np.abs(y_hat - y)
  shown = min(_SHOWN, len(images))
  x_hat = np.asarray(to_discrete(y_hat.astype(np.float32), model.num_bits))
  name = 'reconstruct.png'
  save_rows([images[:shown], x_hat[:shown]], os.path.join(ctx.out_dir, name), model.num_bits)
  return dict(max_abs_error=float(err.max()), mean_abs_error=float(err.mean()),
              discrete_mismatches=int(np.sum(x_hat != images)),
              num_examples=int(len(images)), images=[name])
