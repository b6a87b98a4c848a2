"""XLA compiler options for this project's programs, and `jit`, which applies them.

**CPU kernels.** jaxlib 0.10's XLA:CPU hands convolutions and matmuls to YNNPACK
fusions by default. On the paper model's shapes its own (Eigen) kernels are faster:
a 3x3 convolution's forward and backward at DenseFlow's shapes (batch 8, 8x8 to 32x32
maps, 48 to 432 channels in, 64 out) took 45.6-51.6 ms in all without YNNPACK
against 95-110 ms with it, and matmuls 9.8 against 12.3 ms, on a 2-core Xeon with
AVX-512; the paper model's training step went from 6.42-6.75 s to 5.72-6.05 s
(docs/PERFORMANCE.md). So every program compiled here for CPU turns the YNNPACK
fusions off (`kernels`), per program: other programs in the process and the user's
own keep XLA's defaults. A user's own `--xla_cpu_experimental_ynn_fusion_type` in
`XLA_FLAGS` wins, and an XLA that does not know the option is left alone.

**Programs that run once.** Initialisation (the data-dependent init of every layer)
runs once per run, so its compile time is all that matters. On CPU, LLVM's
optimisation level 1 instead of the default 2 compiles the paper model's init in about
60% of the time (batch 8: 58 s against 95 s on a 2-core Xeon, another job running)
and ran it no slower (9.9 s against 13.2 s); the variables agree to float32 rounding
(a reduction may be summed in another order). The training step keeps the default
level: at level 1 it compiled in 91 s against 130 s but ran 5-10% slower, which a run
pays at every step.

GPU and TPU compiles are left alone. The backend is asked for only when a program is
first compiled, never at import (that would start the backend before a user's
`jax.distributed.initialize` or device-count setting).
"""
import functools
import os

import jax
import numpy as np

_YNN = 'xla_cpu_experimental_ynn_fusion_type'


@functools.lru_cache(maxsize=None)
def _xla_knows(option: str) -> bool:
  """Whether this XLA accepts compiler option `option` (one tiny CPU compile)."""
  try:
    jax.jit(lambda x: x + 1, compiler_options={option: ''}).lower(np.float32(0)).compile()
  except jax.errors.JaxRuntimeError:
    return False
  return True


def kernels() -> dict:
  """`compiler_options` choosing XLA:CPU's own kernels over YNNPACK's (see above)."""
  if (jax.default_backend() != 'cpu' or _YNN in os.environ.get('XLA_FLAGS', '')
      or not _xla_knows(_YNN)):
    return {}
  return {_YNN: ''}  # the empty list of fusion types: no YNNPACK fusions


def run_once() -> dict:
  """`compiler_options` for jax.jit of a program that runs once."""
  if jax.default_backend() == 'cpu':
    return {**kernels(), 'xla_backend_optimization_level': 1}
  return {}


class _Jit:
  """jax.jit(fun, compiler_options=kernels(), **kwargs), built at its first use."""

  def __init__(self, fun, kwargs):
    functools.update_wrapper(self, fun)
    self._fun, self._kwargs, self._jitted = fun, kwargs, None

  def _get(self):
    if self._jitted is None:
      self._jitted = jax.jit(self._fun, compiler_options=kernels(), **self._kwargs)
    return self._jitted

  def __call__(self, *args, **kwargs):
    return self._get()(*args, **kwargs)

  def __getattr__(self, name):  # lower, eval_shape, clear_cache, ...
    if name.startswith('__'):
      raise AttributeError(name)
    return getattr(self._get(), name)


def jit(fun=None, **kwargs):
  """`jax.jit` with this module's CPU kernel choice; a decorator with or without
  keyword arguments (`@functools.partial(xla_options.jit, static_argnums=0)`)."""
  if fun is None:
    return functools.partial(jit, **kwargs)
  return _Jit(fun, kwargs)
