"""DenseFlow's variational dequantizer q(u | x) (Grcic et al. 2021, after Flow++'s
§3.1): a conditional flow on noise, with its context network of gated dense blocks."""
from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from eiw_jax import noise as per_image
from eiw_jax.backbones.densenet import DenseBlock
from eiw_jax.bijectors import Coupling, InvConv1x1, sum_event, unsqueeze
from eiw_jax.dequant import standard_normal_logpdf
from eiw_jax.nets import Conv


class _DequantCouplingNet(nn.Module):
  """DenseFlow's dequantizer coupling features: 1x1 conv on concat(x_a,
  context) -> hidden, then a residual gated dense block."""
  hidden: int = 64
  depth: int = 4
  growth: int = 64
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x, context=None):
    x = x.astype(self.dtype or jnp.float32)
    if context is not None:
      x = jnp.concatenate([x, context.astype(x.dtype)], axis=-1)
    h = Conv(self.hidden, 1, dtype=self.dtype, name='in')(x)   # [B, H/2, W/2, hidden]
    return h + DenseBlock(self.hidden, self.depth, self.growth, dtype=self.dtype,
                          name='dense')(h)


class DenseFlowDequantizer(nn.Module):
  """DenseFlow's variational dequantizer q(u | x) (Flow++, Ho et al. 2019, §3.1).

  `__call__(x, num_bits, eps=None) -> (u, log_q)`: x integer [B,H,W,C] in
  [0, 2**num_bits); u float32 (0, 1)^{H,W,C}; log_q [B] = log q(u | x).

  Context: x -> 2x / (2**b - 1) - 1 -> gated dense block (C -> hidden) -> 2x2
  stride-2 conv -> gated dense block (-> context_channels)   # [B,H/2,W/2,64]
  Flow on squeezed noise [B,H/2,W/2,4C]: eps ~ N(0, I) ('dequant' stream, or
  the explicit `eps`), z = loc + exp(log_scale) * eps (DenseFlow's learned
  per-channel base, zero-initialised), `num_steps` x [1x1 conv, conditional
  affine coupling], a last 1x1 conv, unsqueeze, sigmoid. log_q is
  log N(eps; 0, I) minus the logdet of eps -> u.
  """
  num_steps: int = 4
  hidden: int = 64
  depth: int = 4
  growth: int = 64
  context_channels: int = 64
  context_depth: int = 4
  context_growth: int = 16
  lu: bool = False
  log_scale_bound: float = 2.0
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x, num_bits: int, eps: Optional[jnp.ndarray] = None):
    b, h, w, c = x.shape
    xf = 2.0 * x.astype(jnp.float32) / (2 ** num_bits - 1) - 1.0
    ctx = DenseBlock(self.hidden, self.context_depth, self.context_growth, dtype=self.dtype,
                     name='context_in')(xf)             # [B, H, W, hidden]
    ctx = nn.Conv(self.hidden, (2, 2), strides=(2, 2), padding='VALID', dtype=self.dtype,
                  name='context_down')(ctx)             # [B, H/2, W/2, hidden]
    ctx = DenseBlock(self.context_channels, self.context_depth, self.context_growth,
                     dtype=self.dtype, name='context_out')(ctx)  # [B, H/2, W/2, ctx]

    shape = (b, h // 2, w // 2, 4 * c)
    if eps is None:
      eps = per_image.normal(self.make_rng('dequant'), shape, jnp.float32)
    loc = self.param('base_loc', nn.initializers.zeros, (4 * c,))
    log_scale = self.param('base_log_scale', nn.initializers.zeros, (4 * c,))
    z = loc + jnp.exp(log_scale) * eps                  # [B, H/2, W/2, 4C]
    log_q = standard_normal_logpdf(eps) - jnp.sum(log_scale) * (h // 2) * (w // 2)
    net = functools.partial(_DequantCouplingNet, hidden=self.hidden,
                            depth=self.depth, growth=self.growth, dtype=self.dtype)
    for s in range(self.num_steps):
      z, logdet = InvConv1x1(lu=self.lu, name=f'invconv{s}')(z)
      log_q = log_q - logdet
      z, logdet = Coupling(conditioner=net, log_scale_bound=self.log_scale_bound,
                           out_kernel=1, name=f'coupling{s}')(z, context=ctx)
      log_q = log_q - logdet
    z, logdet = InvConv1x1(lu=self.lu, name=f'invconv{self.num_steps}')(z)
    log_q = log_q - logdet
    z = unsqueeze(z)                                    # [B, H, W, C]
    # log sigmoid'(z) = -softplus(-z) - softplus(z)
    log_q = log_q + sum_event(jax.nn.softplus(-z) + jax.nn.softplus(z))
    return jax.nn.sigmoid(z), log_q
