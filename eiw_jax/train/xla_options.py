"""XLA compiler options for the programs a run compiles (Trainer).

**CPU kernels for DenseFlow.** jaxlib 0.10's XLA:CPU hands convolutions and matmuls
to YNNPACK fusions by default. At DenseFlow's shapes its own (Eigen) kernels are
faster: a 3x3 convolution's forward and backward (batch 8, 8x8 to 32x32 maps, 48 to
432 channels in, 64 out) took 45.6-49.5 ms in all without YNNPACK against 95-110 ms
with it, on a 2-core Xeon with AVX-512, and the paper model's training step went from
6.42-6.75 s to 5.72-6.05 s (docs/PERFORMANCE.md). The small Glow of the demo
(`configs/fashion_mnist.py:small`, width 96) went the other way: 343 training
images/s without YNNPACK against 384 with it, in the same period; its convolutions
into 4 or 8 channels run faster in YNNPACK. So the choice is per backbone: DenseFlow
programs turn the YNNPACK fusions off (`kernels`), the others keep XLA's default. A
user's own `--xla_cpu_experimental_ynn_fusion_type` in `XLA_FLAGS` wins, and an XLA
that does not know the option is left alone.

**Copies of a donated state.** A training step reads the optimiser's state (Adam's
or Adamax's moments) both to update it in place and, through a recomputed copy of the
new moment, to update the parameters. XLA's default copy insertion cannot order
those readers before the in-place write, so it copies each moment first: on the
paper model 1321 copies, 1.05 GB a step. With region analysis
(`xla_cpu_copy_insertion_use_region_analysis`) it orders them instead: the step's
entry kept 709 of its 2035 copies, and the step ran 2.2-2.5% faster (DenseFlow, CPU,
batch 8, two runs) and 2.7% (the demo's Glow), alternated in one process; its
compile time did not change (docs/PERFORMANCE.md). Every backbone's programs use it on CPU.

**Programs that run once.** Initialisation (the data-dependent init of every layer)
runs once per run, so its compile time is all that matters. On CPU, LLVM's
optimisation level 1 instead of the default 2 compiles the paper model's init in about
60% of the time (batch 8: 58 s against 95 s on a 2-core Xeon, another job running)
and ran it no slower (9.9 s against 13.2 s); the variables agree to float32 rounding
(a reduction may be summed in another order). Level 0 compiled it in 38.9 s
against 43.9 s but ran it in 8.0 s against 2.6 s: no gain. The training step keeps
the default level: with YNNPACK's kernels it compiled in 91 s against 130 s at level 1
but ran 5-10% slower; with XLA's own kernels (DenseFlow's now) level 1 neither saves
compile time consistently (one lowering compiled at both: 61.4 s against 55.7 s;
separate compiles in one process: 63-68 s against 61-87 s) nor costs step time
(5.46-5.52 s against 5.48-5.57 s, alternated in one process).

GPU and TPU compiles are left alone.
"""
import functools
import os

import jax
import numpy as np

_YNN = 'xla_cpu_experimental_ynn_fusion_type'
_REGION_COPIES = 'xla_cpu_copy_insertion_use_region_analysis'
_XLA_KERNELS = ('denseflow',)  # backbones whose CPU programs run faster without YNNPACK


@functools.lru_cache(maxsize=None)
def _xla_knows(option: str, value='') -> bool:
  """Whether this XLA accepts compiler option `option` set to `value` (one tiny CPU
  compile)."""
  try:
    jax.jit(lambda x: x + 1, compiler_options={option: value}).lower(np.float32(0)).compile()
  except jax.errors.JaxRuntimeError:
    return False
  return True


def _ours_to_set(option: str, value) -> bool:
  """Whether a run sets CPU compiler option `option` to `value`: on CPU, unless the
  user's `XLA_FLAGS` set it, where this XLA knows it."""
  return (jax.default_backend() == 'cpu' and option not in os.environ.get('XLA_FLAGS', '')
          and _xla_knows(option, value))


def kernels(backbone: str) -> dict:
  """`compiler_options` choosing XLA:CPU's kernels for a model of `backbone`."""
  if backbone in _XLA_KERNELS and _ours_to_set(_YNN, ''):
    return {_YNN: ''}  # the empty list of fusion types: no YNNPACK fusions
  return {}


def compiler_options(backbone: str) -> dict:
  """`compiler_options` for jax.jit of a model of `backbone`'s programs: its CPU
  kernels (`kernels`) and copy insertion by region analysis on CPU (unless the
  user's `XLA_FLAGS` set it)."""
  region = {_REGION_COPIES: True} if _ours_to_set(_REGION_COPIES, True) else {}
  return {**kernels(backbone), **region}


def run_once(backbone: str) -> dict:
  """`compiler_options` for jax.jit of a program that runs once."""
  if jax.default_backend() == 'cpu':
    return {**compiler_options(backbone), 'xla_backend_optimization_level': 1}
  return {}
