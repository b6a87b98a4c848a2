"""Squeeze: 2x2 space-to-depth (RealNVP, Dinh et al. 2017), paper §2.3.

forward: [B, H, W, C] -> [B, H/2, W/2, 4C]; channel index = c * 4 + 2 * dy + dx
(each input channel's 2x2 block stays together). Volume preserving: logdet = 0.
"""
from __future__ import annotations

from flax import linen as nn

from eiw_jax.bijectors.base import Bijector, zero_logdet


def squeeze(x):
  b, h, w, c = x.shape
  if h % 2 or w % 2:
    raise ValueError(f'squeeze needs even height and width, got {h}x{w}')
  x = x.reshape(b, h // 2, 2, w // 2, 2, c)
  return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // 2, w // 2, 4 * c)


def unsqueeze(x):
  b, h, w, c4 = x.shape
  if c4 % 4:
    raise ValueError(f'unsqueeze needs a channel count divisible by 4, got {c4}')
  x = x.reshape(b, h, w, c4 // 4, 2, 2)
  return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, 2 * h, 2 * w, c4 // 4)


class Squeeze(Bijector):
  """Space to depth: [B, H, W, C] -> [B, H/2, W/2, 4C] (RealNVP §3.6); logdet 0."""

  @nn.compact
  def __call__(self, x, inverse=False, **unused):
    return (unsqueeze(x) if inverse else squeeze(x)), zero_logdet(x)
