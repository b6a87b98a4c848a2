"""Eval mode `samples`: sample grids at several temperatures (paper §7.1, §8.1, Fig. 5-6, 11).

z_k ~ N(0, T^2 I) at every scale, decoded through the inverse flow (Eq. 16-19)
and discretised to b-bit images; one PNG per temperature T in eval.temperatures
(`samples_t0.7.png`). The same key is used for every T, so the grids show the
same draws at different temperatures (T = 0 gives the decoded zero latent).
"""
from __future__ import annotations

import os

import jax
import numpy as np

from eiw_jax.evaluation import common
from eiw_jax.evaluation.images import save_grid


def run(ctx) -> dict:
  model, variables = ctx.model, ctx.variables
  n = int(common.option(ctx, 'num_samples'))
  key = jax.random.fold_in(ctx.rng, 2)
  files, stats = [], {}
  for t in common.option(ctx, 'temperatures'):
    t = float(t)
    x = np.asarray(common.sample(model, variables, key, n, t))
    name = f'samples_t{t:g}.png'
    save_grid(x, os.path.join(ctx.out_dir, name), model.num_bits)
    files.append(name)
    stats[f'{t:g}'] = dict(mean=float(x.mean()), std=float(x.std()))
  return dict(images=files, num_samples=n, pixel_stats=stats)
