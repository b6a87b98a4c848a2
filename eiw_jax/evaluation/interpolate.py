"""Eval mode `interpolate`: latent vs data interpolation and two-point interpolation (paper §7.2).

§7.2.1 (Fig. 7): for each of eval.num_pairs test pairs (x_0, x_1) (test images
2i and 2i+1), with a in linspace(0, 1, eval.interpolation_steps):
    data space:   y_a = (1 - a) y_0 + a y_1,            y = to_continuous(x)
    latent space: z_a = (1 - a) z_0 + a z_1 at every scale, z = encode(y), decoded.
`interpolate_pairs.png` alternates rows: latent (decoded z_a), then data (y_a).

§7.2.2 (Fig. 8), as read here: "randomly sample two datapoints z_0 and z_1"
means two draws from the model's prior (every scale, at temperature
eval.interpolation_temperature, as the paper's samples use reduced T); "interpolate
at each scale using the same interpolation method" means z_a = (1 - a) z_0 + a z_1
with the same a at every scale; the n x n grid (n = interpolation_steps) takes
a = i / (n^2 - 1) in raster order, so the top-left cell is z_0 and the bottom-right
z_1 as in Fig. 8 (the paper's formula writes the weights the other way round,
which contradicts its own figure caption). One grid per pair, in one PNG
`interpolate_two_point.png` (the grids stacked vertically).

Sanity value: `endpoint_error`, the max |decode(z_0 or z_1) - y_0 or y_1| of the
latent interpolation at a = 0 and 1 (reconstruction error of the endpoints).
"""
from __future__ import annotations

import os

import jax
import numpy as np

from eiw_jax import api
from eiw_jax.evaluation import common
from eiw_jax.evaluation.images import save_rows
from eiw_jax.flow import flatten_latents
from eiw_jax.model import to_continuous, to_discrete


def _lerp(a0, a1, alphas):
  """[P, D] x2, [S] -> [P, S, D]: (1 - a) a0 + a a1."""
  al = np.asarray(alphas, np.float64)[None, :, None]
  return ((1.0 - al) * a0[:, None] + al * a1[:, None]).astype(np.float32)


def _discrete(y, num_bits):
  return np.asarray(to_discrete(np.asarray(y, np.float32), num_bits))


def run(ctx) -> dict:
  model, variables = ctx.model, ctx.variables
  bits = model.num_bits
  steps = max(2, int(common.option(ctx, 'interpolation_steps')))
  images = common.split_images(ctx, num=2 * int(common.option(ctx, 'num_pairs')))
  pairs = len(images) // 2
  if pairs < 1:
    return dict(skipped='fewer than two test images')
  x0, x1 = images[0:2 * pairs:2], images[1:2 * pairs:2]
  alphas = np.linspace(0.0, 1.0, steps)
  bs = common.option(ctx, 'batch_size')
  hw = tuple(model.image_shape)

  # §7.2.1: latent-space vs data-space interpolation of test pairs.
  z = common.encode_images(ctx, np.concatenate([x0, x1]), bs)
  z_path = _lerp(z[:pairs], z[pairs:], alphas).reshape(pairs * steps, -1)
  y_latent = common.decode_latents(ctx, z_path, bs).reshape(pairs, steps, *hw)
  y0 = np.asarray(to_continuous(x0, bits), np.float64).reshape(pairs, -1)
  y1 = np.asarray(to_continuous(x1, bits), np.float64).reshape(pairs, -1)
  y_data = _lerp(y0, y1, alphas).reshape(pairs, steps, *hw)
  endpoint_error = max(float(np.abs(y_latent[:, 0] - y0.reshape(pairs, *hw)).max()),
                       float(np.abs(y_latent[:, -1] - y1.reshape(pairs, *hw)).max()))
  rows = []
  for p in range(pairs):
    rows += [_discrete(y_latent[p], bits), _discrete(y_data[p], bits)]
  pair_name = 'interpolate_pairs.png'
  save_rows(rows, os.path.join(ctx.out_dir, pair_name), bits)

  # §7.2.2: two-point interpolation between prior draws, at every scale.
  temperature = float(common.option(ctx, 'interpolation_temperature'))
  keys = jax.random.split(jax.random.fold_in(ctx.rng, 3), 2)
  ends = [np.asarray(flatten_latents(api.sample_latents(model, variables, k, pairs, temperature)))
          for k in keys]
  grid_alphas = np.linspace(0.0, 1.0, steps * steps)
  z_grid = _lerp(ends[0], ends[1], grid_alphas).reshape(pairs * steps * steps, -1)
  x_grid = _discrete(common.decode_latents(ctx, z_grid, bs), bits)
  x_grid = x_grid.reshape(pairs * steps, steps, *hw)
  two_name = 'interpolate_two_point.png'
  save_rows(list(x_grid), os.path.join(ctx.out_dir, two_name), bits)
  return dict(images=[pair_name, two_name], num_pairs=pairs, steps=steps,
              endpoint_error=endpoint_error, two_point_temperature=temperature,
              data_vs_latent_mean_abs=float(np.abs(y_latent - y_data).mean()))
