"""Conditioner networks for couplings: not invertible, any architecture will do.

A conditioner maps the conditioning half (and optional context) to a feature map;
the coupling owns the zero-initialised output layer, so every coupling starts as
the identity whatever conditioner it is given.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax
from jax.ad_checkpoint import checkpoint_name
from jax.custom_derivatives import SymbolicZero

# Every Conv's output carries one of these names: the activations that a
# rematerialised `bijectors.scan.Repeat` may keep for the backward pass (the rest is
# recomputed there). CONV_OUTPUT: kernels larger than 1x1; MATMUL_OUTPUT: 1x1.
CONV_OUTPUT = 'conv_output'
MATMUL_OUTPUT = 'conv1x1_output'

_DIMS = ('NHWC', 'HWIO', 'NHWC')


def _conv(x, w, pad):
  return lax.conv_general_dilated(x, w, (1, 1), [(pad, pad), (pad, pad)],
                                  dimension_numbers=_DIMS)


@jax.custom_jvp
def conv_same(x, w):
  """Stride-1 'SAME' convolution with an odd kernel, x [B,H,W,I], w [k,k,I,O],
  whose reverse-mode derivatives are forward convolutions in canonical NHWC/HWIO form.

  Inside a `lax.scan` (stacked flow steps), XLA:CPU leaves autodiff's transposed
  convolutions in a non-canonical layout and runs them ~6-15x slower than the
  same network unrolled. Here the JVP is written so that its transpose, which
  reverse mode computes, is canonical: the input's tangent goes through the
  kernel read as HWOI (whose transpose is an HWIO convolution with the flipped
  kernel), and the kernel's tangent is itself the transpose of the canonical
  weight-gradient convolution (channels as batch, batch as features). Forward
  mode (jax.jvp, jax.jacfwd, jax.hessian) works as for any JAX function.
  """
  return _conv(x, w, w.shape[0] // 2)


def _weight_grad(x, dy, k):
  """dw[i, j, c, o] = sum_{b,h,w} x_pad[b, h+i, w+j, c] dy[b, h, w, o], as one canonical
  convolution: [I, H, W, B] (*) [H, W, B, O] -> [I, k, k, O], then to HWIO."""
  dw = _conv(x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3), k // 2)
  return dw.transpose(1, 2, 0, 3)


def _conv_same_jvp(primals, tangents):
  x, w = primals
  dx, dw = tangents
  k = w.shape[0]
  y = _conv(x, w, k // 2)
  parts = []
  if not isinstance(dx, SymbolicZero):
    parts.append(lax.conv_general_dilated(dx, w.swapaxes(2, 3), (1, 1), [(k // 2, k // 2)] * 2,
                                      dimension_numbers=('NHWC', 'HWOI', 'NHWC')))
  if not isinstance(dw, SymbolicZero):
    # x (*) dw, written as the transpose of dy -> _weight_grad(x, dy) so that reverse
    # mode transposes it back into that canonical convolution.
    dy_aval = jax.ShapeDtypeStruct(y.shape, y.dtype)
    parts.append(jax.linear_transpose(lambda g: _weight_grad(x, g, k), dy_aval)(dw)[0])
  return y, sum(parts[1:], parts[0]) if parts else jnp.zeros_like(y)


conv_same.defjvp(_conv_same_jvp, symbolic_zeros=True)


class Conv(nn.Module):
  """nn.Conv's parameters (kernel [k,k,I,O], bias [O]) and initialisers; stride 1,
  odd kernel, 'SAME' padding. A 1x1 kernel is applied as a matmul over channels
  (on XLA:CPU, forward + backward at DenseFlow's widths took 10.8 ms against
  16.8 ms as a convolution: batch 8, 16x16, 432 channels). Larger kernels on CPU
  differentiate through `conv_same`; on GPU and TPU through XLA's own
  convolution gradients. The output is named `CONV_OUTPUT`, or `MATMUL_OUTPUT` for
  a 1x1 kernel (`jax.checkpoint` policies, `bijectors.scan.REMAT_POLICIES`).

  `dtype` is the compute dtype (None: float32); parameters stay float32.
  """
  features: int
  kernel_size: int = 1
  use_bias: bool = True
  kernel_init: Callable = nn.initializers.lecun_normal()
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    if k % 2 == 0:
      raise ValueError(f'Conv needs an odd kernel size, got {k}')
    dtype = self.dtype or jnp.float32
    x = x.astype(dtype)
    w = self.param('kernel', self.kernel_init, (k, k, x.shape[-1], self.features)).astype(dtype)
    if k == 1:  # a matmul over channels: on CPU 1.5-2.3x faster than the convolution
      y = x @ w[0, 0]
    else:
      conv = conv_same if jax.default_backend() == 'cpu' else (lambda x, w: _conv(x, w, k // 2))
      y = conv(x, w)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,)).astype(dtype)
    return checkpoint_name(y, MATMUL_OUTPUT if k == 1 else CONV_OUTPUT)


class ConvNet(nn.Module):
  """Glow's conditioner: 3x3 conv -> ReLU -> 1x1 conv -> ReLU (features out).

  `dtype` (e.g. jnp.bfloat16) is the compute dtype of the convolutions and of the
  output; None computes in float32. Parameters are float32 either way.
  """
  hidden: int = 512
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x, context: Optional[jnp.ndarray] = None):
    if self.dtype is not None:
      x = x.astype(self.dtype)
    if context is not None:
      x = jnp.concatenate([x, context.astype(x.dtype)], axis=-1)
    x = nn.relu(Conv(self.hidden, 3, dtype=self.dtype)(x))
    return nn.relu(Conv(self.hidden, 1, dtype=self.dtype)(x))
