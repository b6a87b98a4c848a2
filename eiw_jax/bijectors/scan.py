"""Repeated identical bijectors with stacked parameters, run by `lax.scan`.

`Repeat(step, length)` applies `length` copies of the bijector `step()` (each with
its own parameters, stacked along a leading axis) so that a deep flow compiles
once per step type instead of once per step.

Initialisation goes through `nn.scan`, so every copy's data-dependent init
(ActNorm) sees its own input. Applying reads the stacked variables and runs the
step with `lax.scan`, forward or in reverse for the inverse.

Rematerialisation (`remat`, one of REMAT_POLICIES): under autodiff each step
keeps only some of its convolutions' outputs for the backward pass and recomputes
the rest there (normalisations, activations, concatenations, attention, the
invertible maps), so the scan stacks a few large arrays per step instead of every
intermediate. 'convs' (the default) keeps every convolution's output
(`nets.CONV_OUTPUT` and `nets.MATMUL_OUTPUT`): on the paper's DenseFlow (CPU, batch
8) the training step ran 7% faster than with 'off' (5.86 against 6.28-6.33 s) with
1.0 GB less of XLA's temporary memory (1.86 against 2.87 GB). 'spatial_convs'
keeps only the outputs of kernels larger than 1x1 and recomputes the 1x1 ones:
0.29 GB less again (1.57 GB), for a step about 2.6% longer (docs/PERFORMANCE.md).
'off' keeps everything. Values and gradients are the same under every policy up to
float rounding.

Mutable state: when the caller applies the model with the 'consts' collection
mutable (the training step of a model with batch statistics), each step is
applied with mutable 'consts' too and the updated, stacked 'consts' are written
back; otherwise the steps see their variables read-only.

Invertible backprop (`invertible_grad=True`, forward direction): a `jax.custom_vjp`
keeps only the final output; the backward pass walks the steps in reverse,
recomputing each step's input from its output with the step's inverse and
taking that step's VJP there. Activation memory is then that of one step,
whatever `length` is (the idea of RevNets, Gomez et al. 2017, for flows).
Gradients equal ordinary autodiff up to float rounding of the reconstruction.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from eiw_jax.bijectors.base import Bijector, zero_logdet
from eiw_jax.nets import CONV_OUTPUT, MATMUL_OUTPUT

# What a scanned step keeps for the backward pass (None: everything, no remat).
REMAT_POLICIES = {
    'convs': jax.checkpoint_policies.save_only_these_names(CONV_OUTPUT, MATMUL_OUTPUT),
    'spatial_convs': jax.checkpoint_policies.save_only_these_names(CONV_OUTPUT),
    'off': None,
}


class _Body(nn.Module):
  """One step as an nn.scan body: carry (x, logdet) -> (y, logdet + step logdet)."""
  step: Callable[..., Bijector]

  @nn.compact
  def __call__(self, carry, _):
    x, total = carry
    y, logdet = self.step(name='step')(x)
    return (y, total + logdet), None


def _apply_step(step, variables, x, inverse):
  return step.apply(variables, x, inverse=inverse)


def _scan_body(body, remat):
  policy = REMAT_POLICIES[remat]
  return body if policy is None else jax.checkpoint(body, policy=policy)


def _scan(step, stacked, x, inverse, remat='off'):
  def body(carry, variables):
    x, total = carry
    y, logdet = _apply_step(step, variables, x, inverse)
    return (y, total + logdet), None

  (y, total), _ = jax.lax.scan(_scan_body(body, remat), (x, zero_logdet(x)), stacked,
                               reverse=inverse)
  return y, total


def _scan_mutable(step, stacked, x, inverse, remat):
  """_scan with each step's 'consts' mutable; also returns the new stacked 'consts'."""
  def body(carry, variables):
    x, total = carry
    (y, logdet), new = step.apply(variables, x, inverse=inverse, mutable=['consts'])
    return (y, total + logdet), new['consts']

  (y, total), consts = jax.lax.scan(_scan_body(body, remat), (x, zero_logdet(x)), stacked,
                                    reverse=inverse)
  return y, total, consts


def _invertible_scan(step, stacked, x):
  """Forward direction with O(1)-in-depth activation memory for the backward pass."""

  @jax.custom_vjp
  def run(stacked, x):
    return _scan(step, stacked, x, inverse=False)

  def fwd(stacked, x):
    y, total = _scan(step, stacked, x, inverse=False)
    return (y, total), (stacked, y)

  def bwd(res, cotangents):
    stacked, y = res
    dy, dlogdet = cotangents

    def body(carry, variables):
      y, dy = carry
      x = _apply_step(step, variables, y, inverse=True)[0]  # recompute the input
      _, vjp = jax.vjp(lambda v, x: _apply_step(step, v, x, False), variables, x)
      dvars, dx = vjp((dy, dlogdet))
      return (x, dx), dvars

    (_, dx), dstacked = jax.lax.scan(body, (y, dy), stacked, reverse=True)
    return dstacked, dx

  run.defvjp(fwd, bwd)
  return run(stacked, x)


class Repeat(Bijector):
  """`length` copies of `step()` with stacked parameters (see the module docstring)."""
  step: Callable[..., Bijector]
  length: int
  invertible_grad: bool = False
  remat: str = 'convs'  # one of REMAT_POLICIES

  @nn.compact
  def __call__(self, x, inverse=False, **kwargs):
    if kwargs:
      raise ValueError(f'Repeat passes no keyword arguments to its steps, got {sorted(kwargs)}')
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f'unknown remat {self.remat!r}; use one of {sorted(REMAT_POLICIES)}')
    if self.is_initializing():
      if inverse:
        raise ValueError('initialise a flow in the forward direction (data-dependent init)')
      scanned = nn.scan(_Body, variable_axes={True: 0}, split_rngs={'params': True},
                        length=self.length)
      (y, total), _ = scanned(self.step, name='steps')((x, zero_logdet(x)), None)
      return y, total
    stacked = {col: tree['steps']['step'] for col, tree in self.variables.items()
               if 'steps' in tree}
    step = self.step(parent=None)
    if 'consts' in stacked and self.is_mutable_collection('consts'):
      if self.invertible_grad:
        raise ValueError('invertible_grad cannot update state (batch statistics) in the steps')
      y, total, consts = _scan_mutable(step, stacked, x, inverse, self.remat)
      self.put_variable('consts', 'steps', {'step': consts})
      return y, total
    if self.invertible_grad and not inverse:
      return _invertible_scan(step, stacked, x)
    return _scan(step, stacked, x, inverse, self.remat)
