"""The Glow backbone (Kingma & Dhariwal 2018): N steps of ActNorm -> invertible 1x1
conv -> affine coupling per scale, the body the paper's Eq. 5 writes f_k^1..f_k^N.

Its keys are model.num_steps, hidden, lu, coupling, log_scale_bound, scan,
invertible_grad, remat and compute_dtype (builder.model_config).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

from flax import linen as nn

from eiw_jax.bijectors import ActNorm, Bijector, Chain, Coupling, InvConv1x1, Permute, compose
from eiw_jax.bijectors.scan import Repeat
from eiw_jax.errors import UserError
from eiw_jax.nets import ConvNet

COUPLINGS = ('affine', 'additive')


class GlowStep(Bijector):
  """One flow step f_k^n: ActNorm -> invertible 1x1 conv -> affine coupling."""
  hidden: int = 512
  lu: bool = True
  affine: bool = True
  log_scale_bound: float = 2.0
  permutation: Optional[str] = None  # extra fixed permutation ('reverse', ...) after the coupling
  dtype: Optional[Any] = None  # the conditioner's compute dtype (None: float32)

  @nn.compact
  def __call__(self, x, inverse=False, **kwargs):
    layers = [ActNorm(), InvConv1x1(lu=self.lu),
              Coupling(functools.partial(ConvNet, hidden=self.hidden, dtype=self.dtype),
                       affine=self.affine, log_scale_bound=self.log_scale_bound)]
    if self.permutation:
      layers.append(Permute(self.permutation))
    return Chain(tuple(layers), name='chain')(x, inverse=inverse, **kwargs)


class GlowScale(Bijector):
  """The N flow steps of one scale (f_k = f_k^N o ... o f_k^1, Eq. 5).

  With `scan=True` the steps' parameters are stacked and run by `lax.scan` (one
  compile for any N); `invertible_grad=True` then recomputes activations in the
  backward pass instead of storing them (see bijectors/scan.py).
  """
  num_steps: int
  step: Callable[..., Bijector] = GlowStep
  scan: bool = True
  invertible_grad: bool = False
  remat: str = 'convs'  # bijectors.scan.REMAT_POLICIES

  @nn.compact
  def __call__(self, x, inverse=False, **kwargs):
    if self.scan:
      return Repeat(self.step, self.num_steps, self.invertible_grad, self.remat, name='steps')(
          x, inverse=inverse, **kwargs)
    steps = tuple(self.step(name=f'step_{i}') for i in range(self.num_steps))
    return compose(steps, x, inverse, **kwargs)


def model_defaults() -> dict:
  """The Glow backbone is model_config's default: it sets nothing more."""
  return {}


def check(m) -> None:
  """model.* values only the Glow backbone reads (UserError, one line)."""
  if m.coupling not in COUPLINGS:
    raise UserError(f"model.coupling must be 'affine' or 'additive', got {m.coupling!r}")


def body(m, dtype) -> Callable[..., Bijector]:
  """`body(k, name)`: scale k's N Glow steps (every scale has the same structure)."""
  step = dict(hidden=m.hidden, lu=m.lu, affine=m.coupling == 'affine',
              log_scale_bound=m.log_scale_bound)
  if dtype is not None:
    step['dtype'] = dtype  # GlowStep.dtype -> its ConvNet conditioner

  def make(k, name):
    del k
    return GlowScale(num_steps=m.num_steps, step=functools.partial(GlowStep, **step),
                     scan=m.scan, invertible_grad=m.invertible_grad, remat=m.remat, name=name)
  return make
