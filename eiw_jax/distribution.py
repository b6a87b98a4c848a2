"""A distribution-style face of a model, after distrax's and TFP's conventions.

`Distribution(model, variables)` is the model's density over continuous images
y in R^{H x W x C} (event shape (H, W, C), batch shape ()): a standard normal
base over the flat latent z in R^D (D = the sum of the per-scale latent sizes,
`flatten_latents`' order) pushed through `FlowBijector`. As in distrax, the
bijector's forward direction is latent -> data, the opposite of eiw_jax.forward
(data -> latent, the direction of Glow and the paper). Values may carry any
leading batch shape, none included (an unbatched [H, W, C] image gives a scalar).

Integer images and their dequantised bound stay with the functional API
(`log_prob`, `sample`); this face is what composes with other continuous
densities (a prior over a VAE's latents, a mixture). Both classes are pytrees
(the model a static field), so they pass through `jax.jit` as arguments.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Tuple, Union

import flax
import jax
import jax.numpy as jnp

from eiw_jax import api
from eiw_jax.dequant import standard_normal_logpdf
from eiw_jax.errors import UserError
from eiw_jax.flow import flatten_latents, unflatten_latents
from eiw_jax.model import EIWFlow


def _key(seed) -> jax.Array:
  """distrax's seeds: a key, or a Python int."""
  return jax.random.key(seed) if isinstance(seed, int) and not isinstance(seed, bool) else seed


def _split_batch(x, event_shape: Tuple[int, ...], where: str):
  """[..., *event] -> ([N, *event], batch shape ...): the leading axes flattened."""
  if not hasattr(x, 'shape'):
    raise UserError(f'{where}: expects an array; got a {type(x).__name__}. Pass jnp.asarray(...)')
  n = len(event_shape)
  if x.ndim < n or tuple(x.shape[x.ndim - n:]) != tuple(event_shape):
    raise UserError(f'{where}: expects values of shape [..., {", ".join(map(str, event_shape))}] '
                    f'(any batch shape, none included); got {tuple(x.shape)}')
  batch = tuple(x.shape[:x.ndim - n])
  return x.reshape((math.prod(batch), *event_shape)), batch


@flax.struct.dataclass
class FlowBijector:
  """The flow as a distrax-style bijector: forward is latent -> data.

  forward(z) maps flat latents z [..., D] to continuous images y [..., H, W, C];
  forward_and_log_det also returns log|det dy/dz| [...]; inverse_and_log_det(y)
  returns (z, log|det dz/dy|), and the two logdets are negatives of each other.
  `rng` feeds the noise of augmented flows (DenseFlow); None: jax.random.key(0).
  """
  model: EIWFlow = flax.struct.field(pytree_node=False)
  variables: Any
  rng: Optional[jax.Array] = None

  @property
  def latent_shapes(self) -> list:
    return [s[1:] for s in api.latent_shapes(self.model, self.variables)]

  @property
  def latent_size(self) -> int:
    """D, the size of the flat latent."""
    return sum(math.prod(s) for s in self.latent_shapes)

  def forward_and_log_det(self, z: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """Latent z [..., D] -> (y [..., H, W, C], log|det dy/dz| [...])."""
    flat, batch = _split_batch(z, (self.latent_size,), 'FlowBijector.forward')
    latents = unflatten_latents(flat, self.latent_shapes)
    y, logdet = api._inverse(self.model, self.variables, latents, 'FlowBijector.forward')  # pylint: disable=protected-access
    return y.reshape(*batch, *y.shape[1:]), logdet.reshape(batch)

  def inverse_and_log_det(self, y: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """Data y [..., H, W, C] -> (z [..., D], log|det dz/dy| [...])."""
    flat, batch = _split_batch(y, tuple(self.model.image_shape), 'FlowBijector.inverse')
    latents, logdet = api.forward_unbounded(self.model, self.variables, flat, self.rng,
                                            'FlowBijector.inverse')
    z = flatten_latents(latents)
    return z.reshape(*batch, z.shape[-1]), logdet.reshape(batch)

  def forward(self, z: jax.Array) -> jax.Array:
    return self.forward_and_log_det(z)[0]

  def inverse(self, y: jax.Array) -> jax.Array:
    return self.inverse_and_log_det(y)[0]

  def forward_log_det_jacobian(self, z: jax.Array) -> jax.Array:
    return self.forward_and_log_det(z)[1]

  def inverse_log_det_jacobian(self, y: jax.Array) -> jax.Array:
    return self.inverse_and_log_det(y)[1]


@flax.struct.dataclass
class Distribution:
  """The model's density over continuous images, with distrax's methods.

  log_prob(y) is eiw_jax.log_prob_continuous; sample draws z ~ N(0, I) and returns
  y = bijector.forward(z), float32 [*sample_shape, H, W, C] (eiw_jax.to_discrete
  makes images of them). `seed` is a JAX key or a Python int, as in distrax.
  """
  model: EIWFlow = flax.struct.field(pytree_node=False)
  variables: Any
  rng: Optional[jax.Array] = None

  @property
  def event_shape(self) -> Tuple[int, ...]:
    return tuple(self.model.image_shape)

  @property
  def batch_shape(self) -> Tuple[int, ...]:
    return ()

  @property
  def dtype(self):
    return jnp.float32

  @property
  def bijector(self) -> FlowBijector:
    return FlowBijector(self.model, self.variables, self.rng)

  def log_prob(self, value: jax.Array) -> jax.Array:
    """log p(y) in nats, of shape value.shape[:-3]."""
    flat, batch = _split_batch(value, self.event_shape, 'Distribution.log_prob')
    out = api.log_prob_continuous(self.model, self.variables, flat, self.rng)
    return out.reshape(batch)

  def sample_and_log_prob(self, *, seed: Union[int, jax.Array],
                          sample_shape: Union[int, Sequence[int]] = ()
                          ) -> Tuple[jax.Array, jax.Array]:
    """(y [*sample_shape, H, W, C], log p(y) [*sample_shape]) from one inverse pass:
    log p(y) = log N(z; 0, I) - log|det dy/dz|."""
    shape = (sample_shape,) if isinstance(sample_shape, int) else tuple(sample_shape)
    bijector = self.bijector
    z = jax.random.normal(_key(seed), (*shape, bijector.latent_size))
    y, logdet = bijector.forward_and_log_det(z)
    return y, standard_normal_logpdf(z.reshape(-1, z.shape[-1])).reshape(shape) - logdet

  def sample(self, *, seed: Union[int, jax.Array],
             sample_shape: Union[int, Sequence[int]] = ()) -> jax.Array:
    """y [*sample_shape, H, W, C]."""
    return self.sample_and_log_prob(seed=seed, sample_shape=sample_shape)[0]
