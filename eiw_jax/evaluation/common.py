"""Helpers shared by the evaluation modes: options, jitted model calls, batching.

The jitted functions here take the model as a static argument, so every mode
that evaluates the same model object at the same batch shape reuses one
compilation. `map_batches` pads the last, short batch to the batch size (the
padded rows repeat the last image and are dropped afterwards), so a pass over a
split compiles once whatever its length.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from eiw_jax import api
from eiw_jax.flow import flatten_latents, unflatten_latents
from eiw_jax.model import to_continuous

def option(ctx, key: str):
  """ctx.config.eval[key] (the run's config, completed by EvalContext; the defaults
  when there is none)."""
  if ctx.config is None:
    from eiw_jax.evaluation import defaults  # pylint: disable=g-import-not-at-top
    return defaults()[key]
  return ctx.config.eval[key]


def first_examples(images: np.ndarray, num: int) -> np.ndarray:
  """The first `num` rows (num <= 0: all of them)."""
  return images if num <= 0 else images[:num]


def split_images(ctx, split: str = 'test', num: int = None) -> np.ndarray:
  """The first `num` images of a split (default: eval.num_examples)."""
  data = ctx.test if split == 'test' else ctx.train
  return first_examples(data.images, option(ctx, 'num_examples') if num is None else num)


def map_batches(fn: Callable, arrays: Sequence[np.ndarray], batch_size: int):
  """Applies fn(*batch_arrays, batch_index) over aligned arrays in batches of one fixed size.

  The last batch is padded (by repeating its last row) to the batch size, so fn
  traces once; its outputs (a pytree of [B, ...] arrays) are trimmed and
  concatenated along axis 0 on the host. The batch size shrinks to the number of
  rows when there are fewer.
  """
  n = len(arrays[0])
  if n == 0:
    raise ValueError('map_batches got no rows')
  bs = max(1, min(batch_size, n))
  outs = []
  for i, start in enumerate(range(0, n, bs)):
    stop = min(start + bs, n)
    batch = []
    for a in arrays:
      part = np.asarray(a[start:stop])
      if stop - start < bs:
        fill = np.repeat(part[-1:], bs - (stop - start), axis=0)
        part = np.concatenate([part, fill], axis=0)
      batch.append(part)
    out = fn(*batch, i)
    outs.append(jax.tree.map(lambda o, m=stop - start: np.asarray(o)[:m], out))
  return jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *outs)


def log_mean_exp(x, axis: int = 0):
  """log(mean(exp(x))) along `axis`, computed stably (the importance-weighted bound)."""
  x = jnp.asarray(x)
  return jax.nn.logsumexp(x, axis=axis) - math.log(x.shape[axis])


@functools.partial(jax.jit, static_argnums=0)
def log_prob(model, variables, images, rng):
  """eiw_jax.log_prob, jitted: [B] nats."""
  return api.log_prob(model, variables, images, rng)


@functools.partial(jax.jit, static_argnums=(0, 4))
def iw_log_prob(model, variables, images, rng, num_samples: int):
  """Importance-weighted bound with k = num_samples dequantization draws: [B] nats.

  Draw j uses fold_in(rng, j), so draw 0 is what `log_prob(..., fold_in(rng, 0))`
  sees and k = 1 reproduces the single-sample bound exactly. The draws run
  sequentially (lax.map) to keep memory at one batch.
  """
  keys = jax.vmap(lambda j: jax.random.fold_in(rng, j))(jnp.arange(num_samples))
  lps = jax.lax.map(lambda key: api.log_prob(model, variables, images, key), keys)  # [k, B]
  return log_mean_exp(lps, axis=0)


@functools.partial(jax.jit, static_argnums=0)
def encode_flat(model, variables, y, rng):
  """Continuous y [B, H, W, C] -> flattened latents [B, D] (all scales, Eq. 7)."""
  return flatten_latents(api.encode(model, variables, y, rng))


@functools.partial(jax.jit, static_argnums=(0, 3))
def decode_flat(model, variables, flat, shapes):
  """Flattened latents [B, D] -> continuous y [B, H, W, C]."""
  return api.decode(model, variables, unflatten_latents(flat, shapes))


@functools.partial(jax.jit, static_argnums=(0, 3))
def sample(model, variables, rng, n: int, temperature):
  """eiw_jax.sample, jitted; the temperature is traced (one compile for all T)."""
  return api.sample(model, variables, rng, n, temperature)


def latent_shapes(model, variables) -> tuple:
  """Per-scale latent shapes without the batch axis (hashable, for decode_flat)."""
  return tuple(tuple(s[1:]) for s in api.latent_shapes(model, variables, 1))


def encode_images(ctx, images: np.ndarray, batch_size: int = None) -> np.ndarray:
  """Integer images -> flat latents [N, D] of their bin centres, batched."""
  model, variables = ctx.model, ctx.variables
  bs = batch_size or option(ctx, 'batch_size')
  rng = jax.random.fold_in(ctx.rng, 1)

  def fn(x, i):
    y = to_continuous(jnp.asarray(x), model.num_bits)
    return encode_flat(model, variables, y, jax.random.fold_in(rng, i))

  return map_batches(fn, [images], bs)


def decode_latents(ctx, flat: np.ndarray, batch_size: int = None) -> np.ndarray:
  """Flat latents [N, D] -> continuous y [N, H, W, C], batched."""
  model, variables = ctx.model, ctx.variables
  shapes = latent_shapes(model, variables)
  bs = batch_size or option(ctx, 'batch_size')
  return map_batches(lambda z, i: decode_flat(model, variables, jnp.asarray(z), shapes),
                     [flat], bs)
