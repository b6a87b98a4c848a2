"""DenseFlow's scale body and variational dequantizer (Grcić et al., "Densely
connected normalizing flows", NeurIPS 2021): the backbone of EIW-Flow (paper §4;
DESIGN.md §2, DenseFlow-74-10).

One scale is a dense block of `num_units` units, each a chain of `num_modules`
Glow-like modules (`DenseFlowModule`). Before unit i >= 1 a cross-unit coupling
(DenseFlow §3.2, "incremental augmentation") appends `growth` channels of noise
eta_hat = mu + sigma * eta, eta ~ N(0, I), with (mu, log sigma) computed from
the block input and the earlier unit outputs. Channels therefore grow from C to
C + (num_units - 1) * growth across the scale. Each augmentation contributes
sum(log sigma) - log N(eta) to the scale's logdet, so that the flow's
log-density minus these terms is DenseFlow's variational lower bound.

What the cross-unit net sees (from DenseFlow's code): before unit i it
conditions on concat(x_0, y_0, ..., y_{i-2}), the block input and the outputs
of all units but the immediately preceding one (whose output y_{i-1} is the
half that eta_hat is appended to). Its width is 4x its input channels.

Modules inside a unit are run by `bijectors.scan.Repeat` (parameters stacked along a
leading axis of length `num_modules`), so compile time grows with the number of
units, not modules. Initialisation runs inside the scan: each module's ActNorm
is initialised from its own input.

Randomness: the forward direction of `CrossUnitCoupling` / `DenseFlowScale`
draws eta from the 'noise' rng stream (pass `rngs={'noise': key}` to `init` and
`apply`), unless the noise is given explicitly with the `noise` argument. The
inverse needs no randomness: eta is recovered from eta_hat and the context.
The dequantizer draws from the 'dequant' stream.

Precision: `dtype` (None: float32; jnp.bfloat16 for `model.compute_dtype=
'bfloat16'`) is the compute dtype of the coupling networks (their attention
included), the cross-unit nets and the dequantizer's networks. Their features
are cast back to float32 before the zero-initialised output convs, so the
parameters, shifts, log-scales, the invertible maps, the log-determinants and
the loss are float32; the inverse recomputes the same bfloat16 features from
the same inputs, so round trips stay exact to float32 rounding.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import jax.numpy as jnp
from flax import linen as nn

from eiw_jax import noise as per_image
from eiw_jax.bijectors import (ActNorm, Bijector, Coupling, InvConv1x1, Permute, compose,
                               sum_event, zero_logdet)
from eiw_jax.bijectors.scan import Repeat
from eiw_jax.backbones.densenet import NORMS, TOKENS, DenseCouplingNet, NetSettings
from eiw_jax.dequant import standard_normal_logpdf
from eiw_jax.errors import UserError, refuse_unknown
from eiw_jax.nets import Conv


def denseflow_74_10() -> dict:
  """DenseFlow-74-10's hyperparameters (DenseFlow README, CIFAR-10/ImageNet).

  `net` (with `norm`) is the coupling network's `NetSettings`; `dequant` the
  fields of `DenseFlowDequantizer`. Scale k is `DenseFlowScale(num_units=units[k],
  num_modules=modules[k], growth=growth, cross_hidden_mult=cross_hidden_mult,
  net=NetSettings(**net, norm=norm))` (`body` below).
  """
  return dict(
      units=(6, 4, 1),
      modules=(5, 6, 20),           # 6*5 + 4*6 + 1*20 = 74 modules
      growth=10,                    # channels added by each cross-unit coupling
      cross_hidden_mult=4,          # cross-unit net width = 4 * its input channels
      norm='group',                 # coupling-net normalisation; DenseFlow's: 'batch'
      net=dict(hidden=48, dense_growth=64, depth=7, embed=24, num_landmarks=4,
               newton_iters=6, tokens='pixels'),  # DenseFlow's code: 'nchw_reshape'
      dequant=dict(num_steps=4, hidden=64, depth=4, growth=64,
                   context_channels=64, context_depth=4, context_growth=16),
  )


class DenseFlowModule(Bijector):
  """ActNorm -> invertible 1x1 conv -> affine coupling -> channel switch.

  The coupling transforms the last floor(C/2) channels given the first
  ceil(C/2) with a `DenseCouplingNet` (fields below) and a zero-initialised 1x1
  output conv; log-scale = 2 tanh(s / 2). The 1x1 conv is a free matrix with an
  on-device slogdet (`lu=False`, DenseFlow's parametrisation and parameter
  count); `lu=True` uses the LU form.
  """
  net: NetSettings = NetSettings()
  lu: bool = False
  log_scale_bound: float = 2.0
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x, inverse=False, **unused):
    net = functools.partial(DenseCouplingNet, net=self.net, dtype=self.dtype)
    layers = [
        ActNorm(name='actnorm'),
        InvConv1x1(lu=self.lu, name='invconv'),
        Coupling(conditioner=net, log_scale_bound=self.log_scale_bound,
                 out_kernel=1, name='coupling'),
        Permute('swap', name='switch'),
    ]
    return compose(layers, x, inverse)


class CrossUnitCoupling(Bijector):
  """DenseFlow's cross-unit coupling (incremental augmentation).

  forward(x [B,H,W,C], context [B,H,W,C_ctx], noise=None)
      -> (concat(x, eta_hat) [B,H,W,C+growth], logdet [B])
  inverse(y [B,H,W,C+growth], context) -> (y[..., :C], -logdet)

  (mu, raw) = zero-init 1x1 conv(ReLU(3x3 conv(context))) with hidden width
  `cross_hidden_mult * C_ctx`; log sigma = 2 tanh(raw / 2);
  eta_hat = mu + exp(log sigma) * eta. logdet = sum(log sigma) - log N(eta): the
  log-determinant of the square map (x, eta) -> y minus eta's log-density, so
  that adding it to a log-density gives the augmented bound. `noise` ([B,H,W,
  growth], standard normal) replaces the draw from the 'noise' stream; tests
  use it to check the logdet against the Jacobian of (x, eta) -> y.
  """
  growth: int = 10
  cross_hidden_mult: int = 4
  log_scale_bound: float = 2.0
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x, inverse=False, context: Optional[jnp.ndarray] = None,
               noise: Optional[jnp.ndarray] = None, **unused):
    if context is None:
      raise ValueError('CrossUnitCoupling needs the `context` it conditions on')
    g = self.growth
    h = Conv(self.cross_hidden_mult * context.shape[-1], 3, dtype=self.dtype,
             name='hidden')(context)                    # [B, H, W, 4 C_ctx]
    h = nn.relu(h).astype(jnp.promote_types(x.dtype, jnp.float32))
    out = Conv(2 * g, 1, kernel_init=nn.initializers.zeros,
               name='out')(h)                            # [B, H, W, 2g]
    mu, raw = out[..., :g], out[..., g:]
    log_s = self.log_scale_bound * jnp.tanh(raw / self.log_scale_bound)
    if inverse:
      xa, eta_hat = x[..., :-g], x[..., -g:]
      eta = (eta_hat - mu) * jnp.exp(-log_s)
      return xa, standard_normal_logpdf(eta) - sum_event(log_s)
    if noise is None:
      noise = per_image.normal(self.make_rng('noise'), x.shape[:-1] + (g,), x.dtype)
    eta_hat = (mu + jnp.exp(log_s) * noise).astype(x.dtype)
    y = jnp.concatenate([x, eta_hat], axis=-1)           # [B, H, W, C + g]
    return y, sum_event(log_s) - standard_normal_logpdf(noise)


class DenseFlowScale(Bijector):
  """One DenseFlow scale: `num_units` units of `num_modules` modules each, with
  a cross-unit coupling before every unit i >= 1.

  forward(x [B,H,W,C], noise=None) -> (y [B,H,W,C + (num_units-1)*growth], ld)
  inverse(y, **unused) -> (x, -ld)
  `noise`, if given, is a sequence of num_units - 1 standard-normal arrays
  [B,H,W,growth], one per cross-unit coupling (else drawn from 'noise').
  The modules of a unit run under `Repeat` (stacked parameters, lax.scan);
  `invertible_grad=True` recomputes their activations in the backward pass.
  """
  num_units: int
  num_modules: int
  growth: int = 10
  cross_hidden_mult: int = 4
  net: NetSettings = NetSettings()
  lu: bool = False
  log_scale_bound: float = 2.0
  invertible_grad: bool = False
  remat: str = 'convs'  # bijectors.scan.REMAT_POLICIES
  dtype: Optional[Any] = None

  def _unit(self, i, x, inverse):
    module = functools.partial(DenseFlowModule, net=self.net, lu=self.lu,
                               log_scale_bound=self.log_scale_bound, dtype=self.dtype)
    return Repeat(module, self.num_modules, self.invertible_grad, self.remat, name=f'unit{i}')(
        x, inverse=inverse)

  def _cross(self, i):
    return CrossUnitCoupling(self.growth, self.cross_hidden_mult,
                             self.log_scale_bound, self.dtype, name=f'cross{i}')

  @nn.compact
  def __call__(self, x, inverse=False, noise: Optional[Sequence[jnp.ndarray]] = None,
               **unused):
    if noise is not None and len(noise) != self.num_units - 1:
      raise ValueError(f'need {self.num_units - 1} noise arrays, got {len(noise)}')
    if inverse:
      return self._inverse(x)
    feats = [x]                                      # x_0, y_0, ..., y_{i-2}
    y, total = self._unit(0, x, False)
    for i in range(1, self.num_units):
      ctx = jnp.concatenate(feats, axis=-1)
      aug, logdet = self._cross(i)(y, context=ctx,
                                   noise=None if noise is None else noise[i - 1])
      feats.append(y)
      total = total + logdet
      y, logdet = self._unit(i, aug, False)          # [B, H, W, C + i * growth]
      total = total + logdet
    return y, total

  def _inverse(self, y):
    total = zero_logdet(y)
    augmented = {}
    for i in range(self.num_units - 1, 0, -1):
      aug, logdet = self._unit(i, y, True)           # concat(y_{i-1}, eta_hat_i)
      total = total + logdet
      augmented[i] = aug
      y = aug[..., :-self.growth]
    x, logdet = self._unit(0, y, True)
    total = total + logdet
    # The cross-unit terms need the block input and earlier unit outputs,
    # known only once the whole block has been inverted.
    feats = [x]
    for i in range(1, self.num_units):
      ctx = jnp.concatenate(feats, axis=-1)
      prev, logdet = self._cross(i)(augmented[i], inverse=True, context=ctx)
      feats.append(prev)
      total = total + logdet
    return x, total


def model_defaults() -> dict:
  """DenseFlow-74-10, the paper's backbone (Table 4's parameter counts): three scales, learned base,
  variational dequantizer, plain 1x1 convolutions."""
  return dict(num_scales=3, lu=False, learned_base=True, dequantizer='variational',
              denseflow=denseflow_74_10())


def check(m) -> None:
  """model.denseflow's values (UserError, one line)."""
  d = m.denseflow
  if 'units' not in d:
    raise UserError("model.backbone='denseflow' needs the model.denseflow settings, which "
                    'this config lacks; use a DenseFlow config (configs/cifar10.py)')
  _refuse_unknown(d, denseflow_74_10(), 'model.denseflow.')
  if len(d.units) != m.num_scales:
    raise UserError(f'model.denseflow.units has {len(d.units)} scales but '
                    f'model.num_scales={m.num_scales}; make them agree')
  if d.norm not in NORMS:
    raise UserError(f"model.denseflow.norm must be 'group' or 'batch', got {d.norm!r}; "
                    "set config.model.denseflow.norm=group")
  if d.net.tokens not in TOKENS:
    raise UserError(f"model.denseflow.net.tokens must be 'pixels' or 'nchw_reshape', got "
                    f"{d.net.tokens!r}; set config.model.denseflow.net.tokens=pixels")
  if d.norm == 'batch' and m.invertible_grad:
    raise UserError("model.denseflow.norm='batch' needs the stored activations of ordinary "
                    'backprop; set config.model.invertible_grad=False')


def _refuse_unknown(group, defaults: dict, prefix: str) -> None:
  """A misspelt key anywhere in model.denseflow is an error, not a silent default."""
  refuse_unknown(group.keys(), defaults, 'key', prefix)
  for key, value in defaults.items():
    if isinstance(value, dict) and key in group:
      _refuse_unknown(group[key], value, f'{prefix}{key}.')


def body(m, dtype):
  """`body(k, name)`: DenseFlow scale k (its units, modules and cross-unit couplings)."""
  d = m.denseflow
  net = NetSettings(**d.net.to_dict(), norm=d.norm)

  def make(k, name):
    return DenseFlowScale(num_units=d.units[k], num_modules=d.modules[k], growth=d.growth,
                          cross_hidden_mult=d.cross_hidden_mult, net=net, lu=m.lu,
                          log_scale_bound=m.log_scale_bound, invertible_grad=m.invertible_grad,
                          remat=m.remat, dtype=dtype, name=name)
  return make


def dequantizer(m, dtype):
  """DenseFlow's own variational dequantizer (model.denseflow.dequant)."""
  from eiw_jax.backbones.denseflow_dequant import DenseFlowDequantizer  # pylint: disable=g-import-not-at-top
  return DenseFlowDequantizer(**m.denseflow.dequant.to_dict(), dtype=dtype)
