"""Checks of what a caller hands the functional API, each failing with a one-line UserError.

Types, shapes and dtypes are static, so they are checked when a function is
traced: under `jax.jit` they cost nothing after the first call. Values (the
range of integer images and of continuous inputs, finite latents, a
temperature's sign) can only be read from concrete arrays: they are checked when
the function is called outside `jax.jit`, and inside a function compiled by
`eiw_jax.checked` (checked.py); in a plain `jax.jit` they are skipped. Each
value check has one message, whichever way it runs.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from eiw_jax.checked import active, require
from eiw_jax.errors import UserError

if TYPE_CHECKING:
  from eiw_jax.model import EIWFlow


def is_concrete(x) -> bool:
  """True for a value whose contents can be read now (not a tracer, all on this host)."""
  if isinstance(x, jax.core.Tracer):
    return False
  return not isinstance(x, jax.Array) or x.is_fully_addressable


def _range(arrays, ok, message: str) -> None:
  """`ok(lo, hi)` on the smallest and largest value of `arrays`: on the host for
  concrete arrays, in the program in the checked mode; `message` has {lo} and {hi}."""
  if all(is_concrete(a) for a in arrays):
    values = [np.asarray(a) for a in arrays]  # on the host: no op joins a jit trace
    lo, hi = min(v.min().item() for v in values), max(v.max().item() for v in values)
    if not ok(lo, hi):
      raise UserError(message.format(lo=lo, hi=hi))
  elif active():
    as_int = all(jnp.issubdtype(jnp.result_type(a), jnp.integer) for a in arrays)
    dtype = jnp.int32 if as_int else jnp.float32
    lo = jnp.min(jnp.stack([jnp.min(a).astype(dtype) for a in arrays]))
    hi = jnp.max(jnp.stack([jnp.max(a).astype(dtype) for a in arrays]))
    require(ok(lo, hi), message, lo=lo, hi=hi)


def _check_array(x, what: str, where: str) -> None:
  if not (hasattr(x, 'shape') and hasattr(x, 'dtype')):
    raise UserError(f'{where}: {what} must be an array (jax or numpy); got a '
                    f'{type(x).__name__}. Pass jnp.asarray(...) of it')


def _check_shape(model, x, what: str, where: str) -> None:
  _check_array(x, what, where)
  shape = tuple(model.image_shape)
  if x.ndim != 4:
    hint = ' (add a batch axis: x[None])' if tuple(x.shape) == shape else ''
    raise UserError(f'{where}: {what} must have shape [B, {", ".join(map(str, shape))}] '
                    f'(batch, height, width, channels); got shape {tuple(x.shape)}{hint}')
  if tuple(x.shape[1:]) != shape:
    raise UserError(f'{where}: this model takes {what} of shape [B, {", ".join(map(str, shape))}]; '
                    f'got {tuple(x.shape)}')
  if x.shape[0] < 1:
    raise UserError(f'{where}: {what} has an empty batch; pass at least one image')


def check_images(model: 'EIWFlow', images: jax.Array, where: str = 'images') -> None:
  """Integer images [B, H, W, C] of the model's shape with values in [0, 2^b)."""
  _check_shape(model, images, 'integer images', where)
  b = model.num_bits
  if not jnp.issubdtype(images.dtype, jnp.integer):
    raise UserError(
        f'{where}: expects integer images in [0, {2**b}) ({b}-bit); got dtype {images.dtype}. '
        'Pass the integer image itself (to_continuous(x) is for encode/forward)')
  _range([images], lambda lo, hi: (lo >= 0) & (hi < 2**b),
         f'{where}: image values must lie in [0, {2**b}) for this {b}-bit model; got values '
         f'in [{{lo}}, {{hi}}]. Rescale them (x >> (8 - {b}) for 8-bit data) or build the '
         'model with data.num_bits to match')


def check_continuous(model, y, where: str, bounded: bool = True) -> None:
  """Continuous y [B, H, W, C] of the model's shape, floating point, finite, and with
  `bounded` within [-0.5, 0.5] (where to_continuous puts images)."""
  _check_shape(model, y, 'continuous y', where)
  if not jnp.issubdtype(y.dtype, jnp.floating):
    raise UserError(f'{where}: expects continuous y in [-0.5, 0.5) (a float array); got dtype '
                    f'{y.dtype}. Map integer images with eiw_jax.to_continuous(x, num_bits)')
  if bounded:
    _range([y], lambda lo, hi: (lo >= -0.5) & (hi <= 0.5),
           f'{where}: continuous y must lie in [-0.5, 0.5] (to_continuous(images, '
           f'{model.num_bits}) puts images there); got values in [{{lo}}, {{hi}}]. Map integer '
           'images with eiw_jax.to_continuous, or use log_prob_continuous for a density on all '
           'real y')
  else:
    _range([y], lambda lo, hi: (lo > -np.inf) & (hi < np.inf),
           f'{where}: continuous y must be finite; got values in [{{lo}}, {{hi}}]')


def check_latents(model, latents, where: str, shapes: Sequence[Sequence[int]]) -> None:
  """A list of K per-scale latents [z_1..z_K], each [B, *shapes[k]] with one batch size
  B (`shapes`: the per-image shapes, as latent_shapes gives them without B), finite."""
  k = model.flow.num_scales
  if not isinstance(latents, (list, tuple)) or len(latents) != k:
    got = f'{len(latents)} arrays' if isinstance(latents, (list, tuple)) else type(latents).__name__
    raise UserError(f'{where}: expects a list of {k} per-scale latents [z_1, ..., z_{k}] (as '
                    f'encode returns); got {got}. Use unflatten_latents for a flat [B, D] array')
  for i, z in enumerate(latents):
    _check_array(z, f'latent z_{i + 1}', where)
  got = [tuple(z.shape) for z in latents]
  expected = [f'[B, {", ".join(map(str, s))}]' for s in shapes]
  if any(g[1:] != tuple(s) for g, s in zip(got, shapes)) or len({g[0] for g in got}) != 1:
    raise UserError(f'{where}: latents must have shapes {", ".join(expected)} with one batch '
                    f'size B (latent_shapes gives them); got {got}')
  if not all(jnp.issubdtype(z.dtype, jnp.floating) for z in latents):
    raise UserError(f'{where}: latents must be float arrays; got dtypes '
                    f'{[str(z.dtype) for z in latents]}')
  _range(list(latents), lambda lo, hi: (lo > -np.inf) & (hi < np.inf),
         f'{where}: latents must be finite; got values in [{{lo}}, {{hi}}]')


def check_sampling(n, temperature, where: str = 'sample') -> None:
  """n >= 1 images (a Python int) at a temperature >= 0."""
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise UserError(f'{where}: n must be a positive Python int (the number of images); got {n!r}')
  _range([temperature], lambda lo, hi: lo >= 0,
         f'{where}: temperature must be >= 0 (1 samples the model, < 1 its typical set more '
         'tightly); got {lo}')


def check_rng(rng, where: str):
  """One JAX random key (typed, or a raw uint32[2] key); None means jax.random.key(0)."""
  if rng is None:
    return jax.random.key(0)
  dtype, shape = getattr(rng, 'dtype', None), tuple(getattr(rng, 'shape', (None,)))
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) and shape == ():
    return rng
  if dtype == jnp.uint32 and shape == (2,):  # a raw key, as jax.random.PRNGKey makes
    return rng
  got = (f'an array of dtype {dtype} and shape {shape}' if dtype is not None
         else f'{type(rng).__name__} {rng!r}')
  raise UserError(f'{where}: rng must be one JAX random key, e.g. jax.random.key(0) (None means '
                  f'that key); got {got}')


def check_variables(variables, where: str) -> None:
  """The variables dict init returns: {'params': ..., 'consts': ...}."""
  if isinstance(variables, Mapping) and 'params' in variables:
    return
  if isinstance(variables, Mapping) and ('flow' in variables or 'dequantizer' in variables):
    hint = ("this looks like variables['params'] alone; pass the whole dict, e.g. "
            "{**variables, 'params': params}")
  else:
    hint = f"got {type(variables).__name__}; pass the dict that init or load_run returned"
  raise UserError(f"{where}: variables must be the dict {{'params': ..., 'consts': ...}}; {hint}")
