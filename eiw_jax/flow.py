"""Multi-scale assembly (paper §2.3 Eq. 5-7, with the Shuffle of §3 at each transition).

forward (data -> latent), for scales k = 1..K:

    h      = body_k(h)                            # N flow steps, [B, H_k, W_k, C_k]
    k < K: u = Squeeze(h)                         # [B, H_k/2, W_k/2, 4C_k]
           û, KL_k = Shuffle_k(u)                 # only when the Shuffle is on
           h, z_k = û[..., :2C_k], û[..., 2C_k:]  # x_k goes on, z_k is factored out
    k = K: z_K = h                                # no squeeze or split

Every latent is returned standardised, so z_k ~ N(0, I) under the model: with
`split_prior='conditional'` (Glow's learned split prior) z_k is mapped through
(z_k - mu(x_k)) * exp(-log_sigma(x_k)), with `learned_base=True` the last latent
through a per-channel affine (DenseFlow's base); both are bijectors whose logdet
enters the total, and both start as the identity.
"""
from __future__ import annotations

from typing import Callable, List, Sequence

import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from eiw_jax.bijectors import Bijector, squeeze, sum_event, unsqueeze, zero_logdet
from eiw_jax.nets import Conv
from eiw_jax.shuffle import ShuffleSettings, make_shuffle


class Standardize(Bijector):
  """eps = (z - mu) * exp(-log_sigma): a learned Gaussian as a bijector to N(0, I).

  With `conditional=True`, (mu, log_sigma) come from a zero-initialised 3x3 conv on
  the context (Glow's split prior on x_k); otherwise they are per-channel
  parameters (DenseFlow's base). log_sigma = bound * tanh(raw / bound).
  """
  conditional: bool = False
  log_scale_bound: float = 4.0

  @nn.compact
  def __call__(self, z, inverse=False, context=None, **unused):
    c = z.shape[-1]
    if self.conditional:
      out = Conv(2 * c, 3, kernel_init=nn.initializers.zeros, name='prior')(context)
      mu, raw = out[..., :c], out[..., c:]
    else:
      mu = self.param('mean', nn.initializers.zeros, (c,))
      raw = self.param('log_scale', nn.initializers.zeros, (c,))
      raw = jnp.broadcast_to(raw, z.shape)
    log_sigma = self.log_scale_bound * jnp.tanh(raw / self.log_scale_bound)
    logdet = -sum_event(log_sigma)
    if inverse:
      return (z * jnp.exp(log_sigma) + mu).astype(z.dtype), -logdet
    return ((z - mu) * jnp.exp(-log_sigma)).astype(z.dtype), logdet


class MultiScaleFlow(nn.Module):
  """K scales with Squeeze, [Shuffle] and Split at every transition (Eq. 5-7).

  Attributes:
    num_scales: K.
    body: `body(k, name=...)` builds scale k's flow steps: any bijector on
      [B, H, W, C] (it may add channels, as DenseFlow's augmentation does).
    shuffle: the EIW Shuffle at each transition; False gives the vanilla flow.
    shuffle_settings: how each Shuffle is built: its reading, unit, ...
      (shuffle.ShuffleSettings; see eiw_jax/shuffle/__init__.py).
    initial_squeeze: squeeze once before the first scale (needed for 1-channel
      images: a coupling needs two channels).
    split_prior: 'standard' (z_k ~ N(0, I), the paper) or 'conditional' (Glow).
    learned_base: per-channel learned mean and scale for the last latent.
  """
  num_scales: int
  body: Callable[..., Bijector]
  shuffle: bool = True
  initial_squeeze: bool = True
  split_prior: str = 'standard'
  learned_base: bool = False
  shuffle_settings: ShuffleSettings = ShuffleSettings()

  def forward(self, x, **kwargs):
    """Image-shaped x -> (latents [z_1..z_K], logdet [B], KL per transition [K-1]).

    An augmented body (DenseFlow) takes its noise from the 'noise' RNG stream, or
    from `noise=[scale_1, ..., scale_K]` when given (each as that body expects).
    """
    return self(x, **kwargs)

  def inverse(self, latents: Sequence[jnp.ndarray], **kwargs):
    """Latents [z_1..z_K] -> (image-shaped x, logdet [B] of the inverse map)."""
    return self(latents, inverse=True, **kwargs)

  @nn.compact
  def __call__(self, inputs, inverse=False, **kwargs):
    if self.split_prior not in ('standard', 'conditional'):
      raise ValueError(f"split_prior must be 'standard' or 'conditional', got {self.split_prior!r}")
    bodies = [self.body(k, name=f'scale_{k}') for k in range(self.num_scales)]
    priors = [Standardize(conditional=True, name=f'prior_{k}')
              if self.split_prior == 'conditional' else None for k in range(self.num_scales - 1)]
    base = Standardize(name='base') if self.learned_base else None
    shuffles = {}

    def shuffle(k, channels):  # built lazily: the channel count is known only here
      if k not in shuffles:
        shuffles[k] = make_shuffle(self.shuffle_settings, channels, transition=k,
                                   name=f'shuffle_{k}')
      return shuffles[k]

    if inverse:
      return self._inverse(inputs, bodies, priors, base, shuffle, kwargs)
    x = inputs
    total = zero_logdet(x)
    latents, kls = [], []
    h = squeeze(x) if self.initial_squeeze else x
    for k, body in enumerate(bodies):
      h, logdet = body(h, **_for_scale(kwargs, k))
      total = total + logdet
      if k == self.num_scales - 1:
        break
      u = squeeze(h)  # [B, H/2, W/2, 4C]
      if self.shuffle:
        u, kl = shuffle(k, u.shape[-1]).forward_with_kl(u)
        kls.append(kl)
      half = u.shape[-1] // 2
      h, z = u[..., :half], u[..., half:]  # [B, H/2, W/2, 2C] each
      if priors[k] is not None:
        z, logdet = priors[k](z, context=h)
        total = total + logdet
      latents.append(z)
    if base is not None:
      h, logdet = base(h)
      total = total + logdet
    latents.append(h)
    kls = jnp.stack(kls) if kls else jnp.zeros((0,), jnp.float32)
    return latents, total, kls

  def _inverse(self, latents, bodies, priors, base, shuffle, kwargs):
    if len(latents) != self.num_scales:
      raise ValueError(f'expected {self.num_scales} latents, got {len(latents)}')
    h = latents[-1]
    total = zero_logdet(h)
    if base is not None:
      h, logdet = base(h, inverse=True)
      total = total + logdet
    for k in reversed(range(self.num_scales)):
      if k < self.num_scales - 1:
        z = latents[k]
        if priors[k] is not None:
          z, logdet = priors[k](z, inverse=True, context=h)
          total = total + logdet
        u = jnp.concatenate([h, z.astype(h.dtype)], axis=-1)  # [B, H/2, W/2, 4C]
        if self.shuffle:
          u, _ = shuffle(k, u.shape[-1])(u, inverse=True)
        h = unsqueeze(u)
      h, logdet = bodies[k](h, inverse=True, **_for_scale(kwargs, k))
      total = total + logdet
    return (unsqueeze(h) if self.initial_squeeze else h), total


def _for_scale(kwargs: dict, k: int) -> dict:
  """Per-scale keyword arguments: `noise` (explicit augmentation noise, for tests of
  augmented flows) is a sequence with one entry per scale; the rest is shared."""
  if kwargs.get('noise') is None:
    return kwargs
  return {**kwargs, 'noise': kwargs['noise'][k]}


def flatten_latents(latents: Sequence[jnp.ndarray]) -> jnp.ndarray:
  """[z_1..z_K] -> [B, D] (Eq. 7's Concat, after flattening each scale)."""
  return jnp.concatenate([z.reshape(z.shape[0], -1) for z in latents], axis=-1)


def unflatten_latents(flat: jnp.ndarray, shapes: Sequence[Sequence[int]]) -> List[jnp.ndarray]:
  """Inverse of `flatten_latents`. `shapes` are the per-scale shapes as `latent_shapes`
  gives them ([B, H_k, W_k, C_k]; B is taken from `flat`) or per image ([H_k, W_k, C_k])."""
  shapes = [tuple(s[1:]) if len(s) == 4 else tuple(s) for s in shapes]
  sizes = [int(np.prod(s)) for s in shapes]
  if flat.shape[-1] != sum(sizes):
    raise ValueError(f'flat latent has {flat.shape[-1]} dims, shapes need {sum(sizes)}')
  parts = jnp.split(flat, np.cumsum(sizes)[:-1], axis=-1)
  return [p.reshape(flat.shape[0], *s) for p, s in zip(parts, shapes)]
