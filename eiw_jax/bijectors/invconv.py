"""Invertible 1x1 convolution (Glow, Kingma & Dhariwal 2018, §3.2).

forward: y[b, h, w, :] = W @ x[b, h, w, :], logdet = H * W_px * log|det W|.

Two parametrisations:
- `lu=True` (default): W = P @ L @ (U + diag(sign * exp(log_s))), with L unit
  lower-triangular, U strictly upper-triangular, P a fixed permutation and sign
  a fixed sign vector. log|det W| = sum(log_s) costs O(C), no decomposition on
  device or host. P and sign live in the `consts` collection (checkpointed,
  never trained).
- `lu=False`: W is a free matrix; log|det W| from `jnp.linalg.slogdet` on device.

Both start from a random orthogonal W. The matmuls run at HIGHEST precision so
the flow stays exactly invertible on GPUs and TPUs, whose default matmul
precision (TF32 / bfloat16 passes) would not be.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from eiw_jax.bijectors.base import Bijector

_HIGHEST = jax.lax.Precision.HIGHEST


def _orthogonal(rng, c):
  return jax.nn.initializers.orthogonal()(rng, (c, c), jnp.float32)


class InvConv1x1(Bijector):
  """Invertible 1x1 convolution: y = W x at every pixel (Glow §3.2).

  `lu=True` parametrises W = P L (U + diag(sign * exp(log_s))) with P and sign
  fixed constants ('consts'), so log|det W| = sum(log_s); `lu=False` learns W
  itself (DenseFlow) and takes slogdet. logdet = H * W * log|det W|, per image.
  """
  lu: bool = True

  @nn.compact
  def __call__(self, x, inverse=False, **unused):
    c = x.shape[-1]
    num_pixels = x.size // (x.shape[0] * c)
    if self.lu:
      w, log_abs_det = self._lu_weight(c)
    else:
      w = self.param('kernel', lambda rng: _orthogonal(rng, c))
      log_abs_det = jnp.linalg.slogdet(w)[1]
    logdet = log_abs_det * num_pixels * jnp.ones(x.shape[:1], jnp.float32)
    if inverse:
      w_inv = jnp.linalg.inv(w)
      y = jnp.einsum('...c,dc->...d', x, w_inv.astype(x.dtype), precision=_HIGHEST)
      return y, -logdet
    y = jnp.einsum('...c,dc->...d', x, w.astype(x.dtype), precision=_HIGHEST)
    return y, logdet

  def _lu_weight(self, c):
    # Every part comes from one orthogonal matrix drawn with one key. Flax also
    # calls param initialisers abstractly on apply (a shape check), hence the
    # placeholder key outside init.
    key = self.make_rng('params') if self.is_initializing() else jax.random.key(0)

    def part(name):
      p, l, u = jax.scipy.linalg.lu(_orthogonal(key, c))
      s = jnp.diag(u)
      return dict(p=p, l=l, u=jnp.triu(u, 1), sign=jnp.sign(s),
                  log_s=jnp.log(jnp.abs(s)))[name]

    perm = self.variable('consts', 'perm', part, 'p').value
    sign = self.variable('consts', 'sign', part, 'sign').value
    l = self.param('lower', lambda _: part('l'))
    u = self.param('upper', lambda _: part('u'))
    log_s = self.param('log_s', lambda _: part('log_s'))
    lower_mask = jnp.asarray(np.tril(np.ones((c, c), np.float32), -1))
    l = l * lower_mask + jnp.eye(c)
    u = u * lower_mask.T + jnp.diag(sign * jnp.exp(log_s))
    w = perm @ jnp.matmul(l, u, precision=_HIGHEST)
    return w, jnp.sum(log_s)
