"""Checks of what a caller hands the functional API, each failing with a one-line UserError.

Shapes and dtypes are static, so they are checked when a function is traced:
under `jax.jit` they cost nothing after the first call. Values (the range of
integer images, a temperature's sign) can only be read from concrete arrays:
they are checked when the function is called outside `jax.jit` on concrete
inputs, and skipped on tracers. To check values before a jitted call, call
`eiw_jax.check_images(model, images)` yourself.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from eiw_jax.errors import UserError


def is_concrete(x) -> bool:
  """True for a value whose contents can be read now (not a tracer, all on this host)."""
  if isinstance(x, jax.core.Tracer):
    return False
  return not isinstance(x, jax.Array) or x.is_fully_addressable


def _check_shape(model, x, what: str, where: str) -> None:
  shape = tuple(model.image_shape)
  if getattr(x, 'ndim', None) != 4:
    hint = ' (add a batch axis: x[None])' if tuple(getattr(x, 'shape', ())) == shape else ''
    raise UserError(f'{where}: {what} must have shape [B, {", ".join(map(str, shape))}] '
                    f'(batch, height, width, channels); got shape {tuple(np.shape(x))}{hint}')
  if tuple(x.shape[1:]) != shape:
    raise UserError(f'{where}: this model takes {what} of shape [B, {", ".join(map(str, shape))}]; '
                    f'got {tuple(x.shape)}')
  if x.shape[0] < 1:
    raise UserError(f'{where}: {what} has an empty batch; pass at least one image')


def check_images(model, images, where: str = 'images') -> None:
  """Integer images [B, H, W, C] of the model's shape with values in [0, 2^b)."""
  _check_shape(model, images, 'integer images', where)
  dtype = images.dtype  # an array: _check_shape read its ndim
  if not jnp.issubdtype(dtype, jnp.integer):
    raise UserError(
        f'{where}: expects integer images in [0, {2**model.num_bits}) ({model.num_bits}-bit); got '
        f'dtype {dtype}. Pass the integer image itself (to_continuous(x) is for encode/forward)')
  if is_concrete(images):
    values = np.asarray(images)  # on the host: no op joins a jit trace in progress
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= 2**model.num_bits:
      raise UserError(
          f'{where}: image values must lie in [0, {2**model.num_bits}) for this '
          f'{model.num_bits}-bit model; got values in [{lo}, {hi}]. Rescale them '
          f'(x >> (8 - {model.num_bits}) for 8-bit data) or build the model with '
          'data.num_bits to match')


def check_continuous(model, y, where: str) -> None:
  """Continuous y [B, H, W, C] of the model's shape, floating point."""
  _check_shape(model, y, 'continuous y', where)
  if not jnp.issubdtype(y.dtype, jnp.floating):
    raise UserError(f'{where}: expects continuous y in [-0.5, 0.5) (a float array); got dtype '
                    f'{y.dtype}. Map integer images with eiw_jax.to_continuous(x, num_bits)')


def check_latents(model, latents, where: str) -> None:
  """A list of K per-scale latents [z_1..z_K], each [B, ...], one batch size."""
  k = model.flow.num_scales
  if not isinstance(latents, (list, tuple)) or len(latents) != k:
    got = f'{len(latents)} arrays' if isinstance(latents, (list, tuple)) else type(latents).__name__
    raise UserError(f'{where}: expects a list of {k} per-scale latents [z_1, ..., z_{k}] (as '
                    f'encode returns); got {got}. Use unflatten_latents for a flat [B, D] array')
  if len({z.shape[0] for z in latents}) != 1 or any(z.ndim != 4 for z in latents):
    raise UserError(f'{where}: latents must be [B, H_k, W_k, C_k] with one batch size B; got '
                    f'shapes {[tuple(z.shape) for z in latents]} (see latent_shapes)')


def check_sampling(n, temperature, where: str = 'sample') -> None:
  """n >= 1 images (a Python int) at a temperature >= 0."""
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise UserError(f'{where}: n must be a positive Python int (the number of images); got {n!r}')
  if is_concrete(temperature) and float(np.min(np.asarray(temperature))) < 0:
    raise UserError(f'{where}: temperature must be >= 0 (1 samples the model, < 1 its '
                    f'typical set more tightly); got {temperature}')
