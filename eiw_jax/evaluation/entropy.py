"""Eval mode `entropy`: expected entropy E2 and R2E2 of x_k, z_k (paper §4, Eq. 13-15, Table 1).

Eq. 14 averages H(p(x^c(a, b))), the entropy of each scalar element's marginal
over the data, across the elements of x_k; Eq. 15 is R2E2 = (E2(z) - E2(x)) / E2(x).
Both are reported before the Shuffle (x_k, z_k = halves of u_k) and after it
(halves of û_k = u_k[..., perm]), on the first eval.entropy_examples train and
test images, for every transition k = 1..K-1; the vanilla model (no Shuffle)
reports 'before' only. The data go through the model's own dequantizer, i.e. the
continuous density the flow was trained on.

Estimator (per element, N samples, nats): a histogram estimate of the
differential entropy,
    H ~= log N - (1/N) sum_i n_i log n_i + log w + (m - 1) / (2N),
with bin width w = 3.49 sigma N^(-1/3) (Scott's rule, sigma the element's
standard deviation), n_i the bin counts and m the number of occupied bins (the
Miller-Madow bias correction). Why this one: Eq. 13 needs the density of each
element, which the model does not give (marginals of u_k are intractable); a
Gaussian fit would only measure log sigma and so could not show what §4 argues
(that z_k channels are *more Gaussian*, i.e. closer to the maximum-entropy
bound at their variance); a histogram captures non-Gaussianity, and a width
proportional to sigma makes it scale-equivariant (H(aX) = H(X) + log|a|) for
elements whose scales differ by orders of magnitude, which a single fixed width
cannot handle. The Gaussian bound 0.5 log(2 pi e sigma^2) is reported beside it
(`*_gaussian`); the gap is the negentropy. Values are differential entropies and
can be negative, in which case R2E2's sign is not meaningful; the paper's Table 1
magnitudes (~100-250) suggest a different unit or a sum, so compare trends, not
numbers.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from eiw_jax.evaluation import common
from eiw_jax.evaluation.transitions import channel_orders, transition_tensors

ESTIMATOR = ('per-element histogram differential entropy, Scott bin width 3.49*sigma*N^(-1/3), '
             'Miller-Madow corrected, nats; averaged over elements (Eq. 14)')


def histogram_entropy(samples) -> np.ndarray:
  """Differential entropy (nats) of each column of samples [N, M], by the estimator above."""
  s = np.asarray(samples, np.float64)
  n, m = s.shape
  width = 3.49 * s.std(axis=0) * n ** (-1.0 / 3.0)
  width = np.maximum(width, 1e-12)
  bins = np.floor((s - s.min(axis=0)) / width).astype(np.int64)  # [N, M], >= 0
  span = int(bins.max()) + 1
  keys = (np.arange(m, dtype=np.int64)[None, :] * span + bins).ravel()
  uniq, counts = np.unique(keys, return_counts=True)
  column = uniq // span
  nlogn = np.bincount(column, weights=counts * np.log(counts), minlength=m)
  occupied = np.bincount(column, minlength=m)
  return math.log(n) - nlogn / n + np.log(width) + (occupied - 1) / (2.0 * n)


def gaussian_entropy(samples) -> np.ndarray:
  """0.5 log(2 pi e var) of each column of samples [N, M]: the max-entropy bound (nats)."""
  var = np.asarray(samples, np.float64).var(axis=0)
  return 0.5 * np.log(2 * math.pi * math.e * np.maximum(var, 1e-300))


def _r2e2(e_x: float, e_z: float) -> float:
  return (e_z - e_x) / e_x if e_x != 0 else float('nan')


def split_stats(ent: np.ndarray, gauss: np.ndarray, order=None) -> dict:
  """E2 of the two halves of a transition's channels, in the given channel order."""
  if order is not None:
    ent, gauss = ent[..., order], gauss[..., order]
  half = ent.shape[-1] // 2
  e_x, e_z = float(ent[..., :half].mean()), float(ent[..., half:].mean())
  return dict(x=e_x, z=e_z, r2e2=_r2e2(e_x, e_z),
              x_gaussian=float(gauss[..., :half].mean()),
              z_gaussian=float(gauss[..., half:].mean()))


def collect_transitions(ctx, images: np.ndarray, seed: int) -> list:
  """u_k for every image, as host arrays [N, H_k, W_k, 4C_k]."""
  model, variables = ctx.model, ctx.variables
  rng = jax.random.fold_in(ctx.rng, seed)

  def fn(x, i):
    return transition_tensors(model, variables, jnp.asarray(x), jax.random.fold_in(rng, i))

  return common.map_batches(fn, [images], common.option(ctx, 'batch_size'))


def run(ctx) -> dict:
  model, variables = ctx.model, ctx.variables
  if model.flow.num_scales < 2:
    return dict(skipped='a single-scale flow has no transitions')
  num = int(common.option(ctx, 'entropy_examples'))
  out = dict(estimator=ESTIMATOR, shuffle=bool(model.flow.shuffle), num_examples={})
  orders = None
  for seed, split in ((4, 'train'), (5, 'test')):
    images = common.split_images(ctx, split, num)
    us = collect_transitions(ctx, images, seed)
    if orders is None:
      orders = channel_orders(model, variables, [u.shape[-1] for u in us])
    rows = []
    for k, u in enumerate(us):
      flat = u.reshape(len(u), -1)
      ent = histogram_entropy(flat).reshape(u.shape[1:])
      gauss = gaussian_entropy(flat).reshape(u.shape[1:])
      row = dict(k=k + 1, before=split_stats(ent, gauss))
      if orders is not None:
        row['after'] = split_stats(ent, gauss, orders[k][1])
      rows.append(row)
    out[split] = rows
    out['num_examples'][split] = int(len(images))
  return out
