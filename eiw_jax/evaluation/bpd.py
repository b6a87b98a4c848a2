"""Eval mode `bpd`: test bits/dim (paper §6.1, Table 2; DESIGN §1).

For b-bit images x with y = (x + u) / 2^b and u ~ q(u|x),

    bpd    = -E_x[log p(y) - log q(u|x) - D b ln 2] / (D ln 2)       (one draw of u)
    bpd_iw = -E_x[log (1/k) sum_j exp(log p(y_j) - log q(u_j|x) - D b ln 2)] / (D ln 2)

The second is the importance-weighted bound with k dequantization draws
(eval.iw_samples; DenseFlow used k = 1000 on CIFAR-10); it is never looser than
the first in expectation and tightens as k grows. Draw 0 of the k draws is the
single draw the plain bound uses, so k = 1 reproduces `bpd` exactly.

Batch i uses key fold_in(rng, i) and draw j of it fold_in(fold_in(rng, i), j).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from eiw_jax.evaluation import common
from eiw_jax.losses import bits_per_dim


def run(ctx) -> dict:
  model, variables = ctx.model, ctx.variables
  images = common.split_images(ctx)
  bs = common.option(ctx, 'batch_size')
  k = int(common.option(ctx, 'iw_samples'))
  rng = jax.random.fold_in(ctx.rng, 0)

  def plain(x, i):
    key = jax.random.fold_in(jax.random.fold_in(rng, i), 0)
    return common.log_prob(model, variables, jnp.asarray(x), key)

  lp = common.map_batches(plain, [images], bs).astype(np.float64)
  out = dict(bpd=float(np.mean(bits_per_dim(lp, model.num_dims))),
             num_examples=int(len(images)))
  if k > 0:
    def weighted(x, i):
      return common.iw_log_prob(model, variables, jnp.asarray(x), jax.random.fold_in(rng, i), k)

    lp_iw = common.map_batches(weighted, [images], bs).astype(np.float64)
    out.update(bpd_iw=float(np.mean(bits_per_dim(lp_iw, model.num_dims))), iw_samples=k)
  return out
