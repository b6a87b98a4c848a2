"""Per-image random draws, so that an image's noise does not depend on its batch.

The rule: image i of a batch, under key k, draws its noise from
`jax.random.fold_in(k, i)`. The dequantisation noise (DenseFlow's augmentation
noise, the FFJORD backbone's trace probes) of an image is then a function of the
key and its index alone: the first four images of a batch of 64 get the same
noise, hence the same log_prob, as the same images passed as a batch of 4 under
the same key.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _per_image(draw, rng, shape, dtype):
  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(shape[0]))
  return jax.vmap(lambda key: draw(key, tuple(shape[1:]), dtype))(keys)


def uniform(rng, shape, dtype=jnp.float32) -> jnp.ndarray:
  """U[0, 1) noise of `shape` = [B, ...], image i from fold_in(rng, i)."""
  return _per_image(jax.random.uniform, rng, shape, dtype)


def normal(rng, shape, dtype=jnp.float32) -> jnp.ndarray:
  """N(0, 1) noise of `shape` = [B, ...], image i from fold_in(rng, i)."""
  return _per_image(jax.random.normal, rng, shape, dtype)


def rademacher(rng, shape, dtype=jnp.float32) -> jnp.ndarray:
  """Signs +-1 with probability 1/2 of `shape` = [B, ...], image i from fold_in(rng, i)."""
  return _per_image(jax.random.rademacher, rng, shape, dtype)
