"""Affine and additive coupling (RealNVP, Dinh et al. 2017; Glow §3.3).

Split x = [x_a, x_b] with x_a the first ceil(C/2) channels. forward:
    h = conditioner(x_a, context);  (shift, raw) = zero_init_conv(h)
    affine:   y_b = x_b * exp(log_s) + shift,  log_s = bound * tanh(raw / bound)
    additive: y_b = x_b + shift
y = [x_a, y_b]; logdet = sum(log_s). The bound (2 by default, DenseFlow's
2*tanh(s/2)) keeps every scale in [e^-2, e^2]. The output layer starts at zero,
so a new coupling is the identity. The conditioner may compute in a lower
precision (nets.ConvNet's dtype): its features are cast back to float32 before
the output layer, so shift, log_s, the affine map and logdet are float32, and
the inverse recomputes the same conditioner output from the same x_a.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax.numpy as jnp
from flax import linen as nn

from eiw_jax.bijectors.base import Bijector, sum_event
from eiw_jax.nets import Conv


class Coupling(Bijector):
  """Affine (or additive) coupling: the first ceil(C/2) channels condition the
  rest through `conditioner` (see the module docstring); starts as the identity."""
  conditioner: Callable[[], nn.Module]
  affine: bool = True
  log_scale_bound: float = 2.0
  out_kernel: int = 3

  @nn.compact
  def __call__(self, x, inverse=False, context: Optional[jnp.ndarray] = None, **unused):
    c = x.shape[-1]
    if c < 2:
      raise ValueError(f'coupling needs at least 2 channels, got {c}; squeeze first')
    ca = (c + 1) // 2
    xa, xb = x[..., :ca], x[..., ca:]
    h = self.conditioner()(xa, context)
    h = h.astype(jnp.promote_types(x.dtype, jnp.float32))  # [B, H, W, hidden]
    k = self.out_kernel
    out = Conv(2 * (c - ca) if self.affine else c - ca, k,
               kernel_init=nn.initializers.zeros, name='out')(h)
    if self.affine:
      shift, raw = out[..., 0::2], out[..., 1::2]
      log_s = self.log_scale_bound * jnp.tanh(raw / self.log_scale_bound)
    else:
      shift, log_s = out, None
    if inverse:
      yb = xb - shift
      if log_s is not None:
        yb = yb * jnp.exp(-log_s)
    else:
      yb = xb if log_s is None else xb * jnp.exp(log_s)
      yb = yb + shift
    logdet = jnp.zeros(x.shape[:1], jnp.float32) if log_s is None else sum_event(log_s)
    return jnp.concatenate([xa, yb.astype(x.dtype)], axis=-1), -logdet if inverse else logdet
