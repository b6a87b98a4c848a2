"""Eval mode `speed`: inference and sampling throughput and parameter counts (paper §6.3, Table 4).

Batch size eval.speed_batch_size, by default the paper's: 64 for 32x32 images,
32 for 64x64 (DenseFlow's training batches; Table 4's text also mentions 16),
64 otherwise. Each function is jitted, warmed up once (compilation excluded),
then timed over eval.speed_iters runs with block_until_ready; images/s =
batch * iters / seconds. Inputs are random images of the model's shape, so no
data is read. Parameter counts come from `summary.param_counts` (eval_shape).
"""
from __future__ import annotations

import time

import jax
import numpy as np

from eiw_jax.evaluation import common
from eiw_jax.evaluation.summary import param_counts


def default_batch_size(image_size: int) -> int:
  return {32: 64, 64: 32}.get(int(image_size), 64)


def _throughput(fn, batch: int, iters: int) -> dict:
  jax.block_until_ready(fn(0))  # compile + warm-up
  start = time.perf_counter()
  for i in range(iters):
    jax.block_until_ready(fn(i + 1))
  seconds = time.perf_counter() - start
  return dict(images_per_s=batch * iters / seconds, seconds_per_batch=seconds / iters)


def run(ctx) -> dict:
  model, variables = ctx.model, ctx.variables
  batch = int(common.option(ctx, 'speed_batch_size')) or default_batch_size(model.image_shape[0])
  iters = max(1, int(common.option(ctx, 'speed_iters')))
  rng = jax.random.fold_in(ctx.rng, 7)
  images = np.random.default_rng(0).integers(
      0, 2**model.num_bits, (batch, *model.image_shape)).astype(np.uint8)
  images = jax.device_put(images)

  inference = _throughput(
      lambda i: common.log_prob(model, variables, images, jax.random.fold_in(rng, i)), batch, iters)
  sampling = _throughput(
      lambda i: common.sample(model, variables, jax.random.fold_in(rng, i), batch, 1.0),
      batch, iters)
  return dict(batch_size=batch, iters=iters, device=str(jax.devices()[0].platform),
              inference=inference, sampling=sampling, **param_counts(model))
