"""DenseFlow's coupling network (Grcić et al., "Densely connected normalizing
flows", NeurIPS 2021, §3.3 and Fig. 3): a multi-head dense block.

    x [B,H,W,Cin] -> 1x1 conv (-> hidden)                         # [B,H,W,48]
      -> branch (a): `depth` dense layers [1x1 conv + ReLU (width kept),
                     3x3 conv (-> dense_growth) + ReLU, concatenate],
                     then gated 1x1 conv a + b * sigmoid(c) (-> hidden)
         branch (b): Nystrom self-attention (embed, num_landmarks, Newton
                     iterations for the landmark pseudo-inverse, residual +v)
      -> concat(b, a) -> normalisation -> ReLU -> 1x1 conv (2*hidden -> hidden,
         no bias)                                                 # [B,H,W,48]

`DenseCouplingNet` returns these features; the `Coupling` bijector owns the
zero-initialised output 1x1 conv (hidden -> 2 * C_b, with bias), as in DenseFlow
where that conv is the last layer of the same network. Widths and bias
placement follow DenseFlow's code, so parameter counts match it exactly.

Normalisation (`norm`, config key model.denseflow.norm). DenseFlow normalises
the concatenated branches with BatchNorm. The default, 'group', is a per-example
normalisation over (H, W, C) (GroupNorm with one group) with the same parameters,
a per-channel scale and bias: the parameter count is unchanged, each log-density
depends on its own example only, the flow is exactly invertible whatever the
batch composition, and there are no batch statistics to carry. 'batch' is
DenseFlow's own choice (`BatchNorm` below), for a faithful reproduction.

`DenseBlock` (branch (a) on its own) is also the building block of DenseFlow's
variational dequantizer (`eiw_jax.backbones.denseflow.DenseFlowDequantizer`).

Convolutions use `eiw_jax.nets.Conv` (fast backward passes inside lax.scan on CPU).

Precision. `dtype` (None: float32; e.g. jnp.bfloat16) is the compute dtype of
every convolution, the attention and the normalisation; parameters stay
float32. The attention's landmark pseudo-inverse (an M x M Newton iteration,
M = 4) runs in float32 whatever `dtype`: its iteration loses its accuracy in
bfloat16, and it is tiny.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from eiw_jax.nets import Conv


NORMS = ('group', 'batch')


@dataclasses.dataclass(frozen=True)
class NetSettings:
  """The coupling network's settings (model.denseflow.net, plus model.denseflow.norm);
  the defaults are DenseFlow-74-10's."""
  hidden: int = 48
  dense_growth: int = 64
  depth: int = 7
  embed: int = 24
  num_landmarks: int = 4
  newton_iters: int = 6
  norm: str = 'group'   # NORMS: 'group' (per example) or 'batch' (DenseFlow's BatchNorm)
  tokens: str = 'pixels'  # TOKENS: the attention's token layout (NystromAttention)

class BatchNorm(nn.Module):
  """DenseFlow's BatchNorm (PyTorch's BatchNorm2d: momentum 0.1, eps 1e-5).

  Training mode (the 'consts' collection is mutable: `init`, and the training
  step, which applies the model with mutable=['consts']): normalise with the
  batch's per-channel mean and biased variance over (B, H, W), and (not in
  `init`) move the running averages 'mean' and 'var' a fraction `momentum`
  toward them (the variance unbiased, n / (n - 1), as PyTorch). Under `jax.jit` with the batch
  sharded over devices these are means over the global batch, so the statistics
  are the same on every device. Evaluation mode (everything else: log_prob,
  sampling, encode/decode): normalise with the running averages, so each
  log-density depends on its own image only and the flow is exactly invertible.

  The running averages are non-trainable state in the 'consts' collection (like
  the LU permutation and the Shuffle's committed order), so they travel in the
  train state and its checkpoints. Parameters: a per-channel 'scale' and 'bias'.
  """
  momentum: float = 0.1
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, h):
    c = h.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,))
    bias = self.param('bias', nn.initializers.zeros, (c,))
    ra_mean = self.variable('consts', 'mean', jnp.zeros, (c,))
    ra_var = self.variable('consts', 'var', jnp.ones, (c,))
    if self.is_mutable_collection('consts'):
      axes = tuple(range(h.ndim - 1))
      mean = jnp.mean(h, axis=axes)                                # [C]
      var = jnp.mean(jnp.square(h - mean), axis=axes)              # [C], biased
      n, m = h.size // c, self.momentum
      if self.is_initializing():  # the averages start at (0, 1), as PyTorch's
        return (h - mean) * lax.rsqrt(var + self.epsilon) * scale + bias
      ra_mean.value = (1 - m) * ra_mean.value + m * lax.stop_gradient(mean)
      ra_var.value = (1 - m) * ra_var.value + m * lax.stop_gradient(var) * n / max(n - 1, 1)
    else:
      mean, var = ra_mean.value, ra_var.value
    return (h - mean) * lax.rsqrt(var + self.epsilon) * scale + bias


class DenseBlock(nn.Module):
  """`depth` dense layers, then a gated (or plain) 1x1 conv to `features`.

  Dense layer i sees w_i = C_in + i * growth channels: 1x1 conv (w_i -> w_i) +
  ReLU, 3x3 conv (w_i -> growth) + ReLU, concatenated to its input. The gated
  output conv maps C_in + depth * growth -> 3 * features, split sequentially
  into (a, b, c), and returns a + b * sigmoid(c).
  """
  features: int
  depth: int = 7
  growth: int = 64
  gated: bool = True
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x):
    x = x.astype(self.dtype or jnp.float32)
    for i in range(self.depth):
      w = x.shape[-1]
      h = nn.relu(Conv(w, 1, dtype=self.dtype, name=f'layer{i}_1x1')(x))
      h = nn.relu(Conv(self.growth, 3, dtype=self.dtype, name=f'layer{i}_3x3')(h))
      x = jnp.concatenate([x, h], axis=-1)           # [B, H, W, w + growth]
    if not self.gated:
      return Conv(self.features, 1, dtype=self.dtype, name='out')(x)
    h = Conv(3 * self.features, 1, dtype=self.dtype, name='gate')(x)   # [B, H, W, 3F]
    a, b, c = jnp.split(h, 3, axis=-1)
    return a + b * nn.sigmoid(c)                      # [B, H, W, F]


def newton_pinv(k: jnp.ndarray, num_iters: int) -> jnp.ndarray:
  """Iterative pseudo-inverse of [..., n, n] matrices (Nystromformer, Xiong et
  al. 2021, Eq. 16): V0 = K^T / (max col sum * max row sum), then
  V <- V/4 (13 I - KV (15 I - KV (7 I - KV)))."""
  eye = jnp.eye(k.shape[-1], dtype=k.dtype)
  ka = jnp.abs(k)
  col = jnp.max(jnp.sum(ka, axis=-2, keepdims=True), axis=-1, keepdims=True)
  row = jnp.max(jnp.sum(ka, axis=-1, keepdims=True), axis=-2, keepdims=True)
  v = jnp.swapaxes(k, -1, -2) / (col * row)
  for _ in range(num_iters):
    kv = k @ v
    v = (0.25 * v) @ (13 * eye - kv @ (15 * eye - kv @ (7 * eye - kv)))
  return v


TOKENS = ('pixels', 'nchw_reshape')


class NystromAttention(nn.Module):
  """DenseFlow's single-head Nystrom self-attention with a residual on v.

  Tokens (`tokens`, config key model.denseflow.net.tokens):
  - 'pixels' (the default): token i is pixel i in raster order, its features the
    3E channels of the qkv conv there: [B, H, W, 3E] -> [B, H*W, 3E].
  - 'nchw_reshape': DenseFlow's code. It reshapes the qkv conv's NCHW output
    [B, 3E, H, W] to [B, H*W, 3E] without a transpose, so token i holds the 3E
    consecutive values at flat positions 3E*i ... 3E*(i+1) - 1 of the channel-major
    array (pieces of rows of one or a few channels), and q, k, v are its thirds;
    the attention's output [B, H*W, E] is read back as [B, E, H, W] the same way.
    A model converted from DenseFlow's weights needs it to compute DenseFlow's
    function (eiw_jax/convert/).
  Landmarks are the means of `num_landmarks` consecutive token segments scaled
  by 1/sqrt(H*W); q and k themselves are not scaled. As in DenseFlow, every
  softmax normalises over the second-to-last axis of its score matrix.
  """
  embed: int = 24
  num_landmarks: int = 4
  newton_iters: int = 6
  dtype: Optional[Any] = None
  tokens: str = 'pixels'

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    n, e, m = h * w, self.embed, self.num_landmarks
    if n % m:
      raise ValueError(f'{n} tokens do not split into {m} landmark segments')
    if self.tokens not in TOKENS:
      raise ValueError(f'tokens must be one of {TOKENS}, got {self.tokens!r}')
    channel_major = self.tokens == 'nchw_reshape'
    qkv = Conv(3 * e, 1, dtype=self.dtype, name='qkv')(x)          # [B, H, W, 3E]
    if channel_major:
      qkv = qkv.transpose(0, 3, 1, 2)                               # [B, 3E, H, W]
    q, k, v = jnp.split(qkv.reshape(b, n, 3 * e), 3, axis=-1)       # [B, N, E] each
    q_l = q.reshape(b, m, n // m, e).mean(axis=2) / math.sqrt(n)   # [B, M, E]
    k_l = k.reshape(b, m, n // m, e).mean(axis=2) / math.sqrt(n)   # [B, M, E]
    k1 = jax.nn.softmax(jnp.einsum('bie,bje->bij', q, k_l), axis=-2)    # [B, N, M]
    k2 = jax.nn.softmax(jnp.einsum('bie,bje->bij', q_l, k_l), axis=-2)  # [B, M, M]
    k3 = jax.nn.softmax(jnp.einsum('bie,bje->bij', q_l, k), axis=-2)    # [B, M, N]
    pinv = newton_pinv(k2.astype(jnp.float32), self.newton_iters).astype(k2.dtype)
    out = (k1 @ pinv) @ (k3 @ v) + v                                    # [B, N, E]
    if channel_major:
      out = out.reshape(b, e, h, w).transpose(0, 2, 3, 1)               # [B, H, W, E]
    return Conv(c, 1, dtype=self.dtype, name='out')(out.reshape(b, h, w, e))  # [B, H, W, C]


class DenseCouplingNet(nn.Module):
  """DenseFlow's intra-unit coupling network (features only; see module doc).

  Call: `net(x_a, context=None) -> h`, x_a [B, H, W, C_a] (context, if given,
  is concatenated on channels) -> h [B, H, W, hidden].
  """
  net: NetSettings = NetSettings()
  norm_eps: float = 1e-5
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x, context: Optional[jnp.ndarray] = None):
    s = self.net
    x = x.astype(self.dtype or jnp.float32)
    if context is not None:
      x = jnp.concatenate([x, context.astype(x.dtype)], axis=-1)
    x = Conv(s.hidden, 1, dtype=self.dtype, name='in')(x)    # [B, H, W, hidden]
    att = NystromAttention(s.embed, s.num_landmarks, s.newton_iters, dtype=self.dtype,
                           tokens=s.tokens, name='attention')(x)
    dense = DenseBlock(s.hidden, s.depth, s.dense_growth, dtype=self.dtype, name='dense')(x)
    h = jnp.concatenate([att, dense], axis=-1)       # [B, H, W, 2 * hidden]
    if s.norm == 'batch':
      h = BatchNorm(epsilon=self.norm_eps, name='norm')(h)
    else:
      h = nn.GroupNorm(num_groups=1, epsilon=self.norm_eps, dtype=self.dtype, name='norm')(h)
    return Conv(s.hidden, 1, use_bias=False, dtype=self.dtype, name='mix')(nn.relu(h))
