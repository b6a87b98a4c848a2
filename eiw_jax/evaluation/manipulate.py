"""Eval mode `manipulate`: semantic manipulation along a class direction (paper §7.4, Eq. 20).

The evaluated test images (eval.num_examples; 0 = all) are split by label:
class eval.manipulate_positive and class eval.manipulate_negative. Their mean
latents (all scales, flattened, from encode of the bin centres) give

    z_manipulation = z_+ - z_-,      z_final = z_target + alpha * z_manipulation   (Eq. 20)

for alpha in eval.manipulate_alphas (the paper's Fig. 10 spans -2..2 with the
original in the middle). Targets are the first eval.num_pairs test images; one row
per target in `manipulate.png`. Datasets without labels are skipped.
"""
from __future__ import annotations

import os

import numpy as np

from eiw_jax.evaluation import common
from eiw_jax.evaluation.images import save_rows
from eiw_jax.model import to_discrete


def run(ctx) -> dict:
  model = ctx.model
  split = ctx.test
  if split.labels is None:
    return dict(skipped='no labels')
  pos = int(common.option(ctx, 'manipulate_positive'))
  neg = int(common.option(ctx, 'manipulate_negative'))
  num = int(common.option(ctx, 'num_examples'))
  images = common.first_examples(split.images, num)
  labels = common.first_examples(split.labels, num)
  is_pos, is_neg = labels == pos, labels == neg
  if not is_pos.any() or not is_neg.any():
    return dict(skipped=f'no test images of class {pos if not is_pos.any() else neg}')
  bs = common.option(ctx, 'batch_size')
  chosen = is_pos | is_neg
  z = common.encode_images(ctx, images[chosen], bs).astype(np.float64)
  sel_pos = is_pos[chosen]
  direction = z[sel_pos].mean(axis=0) - z[~sel_pos].mean(axis=0)  # z_+ - z_-, [D]

  targets = images[:max(1, int(common.option(ctx, 'num_pairs')))]
  alphas = np.asarray(common.option(ctx, 'manipulate_alphas'), np.float64)
  z_t = common.encode_images(ctx, targets, bs).astype(np.float64)
  z_final = z_t[:, None] + alphas[None, :, None] * direction  # [T, A, D]
  y = common.decode_latents(ctx, z_final.reshape(-1, z_t.shape[-1]).astype(np.float32), bs)
  x = np.asarray(to_discrete(y, model.num_bits)).reshape(len(targets), len(alphas),
                                                          *model.image_shape)
  name = 'manipulate.png'
  save_rows(list(x), os.path.join(ctx.out_dir, name), model.num_bits)
  return dict(images=[name], positive=pos, negative=neg, num_positive=int(is_pos.sum()),
              num_negative=int(is_neg.sum()), alphas=[float(a) for a in alphas],
              direction_norm=float(np.linalg.norm(direction)), num_targets=int(len(targets)))
