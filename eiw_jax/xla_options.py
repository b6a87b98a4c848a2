"""XLA compiler options for programs that run once.

Initialisation (the data-dependent init of every layer) runs once per run, so its
compile time is all that matters. On CPU, LLVM's optimisation level 1 instead of the
default 2 compiles the paper model's init in about 60% of the time (batch 8: 58 s
against 95 s on a 2-core Xeon, another job running) and ran it no slower (9.9 s
against 13.2 s); the variables agree to float32 rounding (a reduction may be summed
in another order). The training step keeps the default level: at level 1 it
compiled in 91 s against 130 s but ran 5-10% slower, which a run pays at every
step. GPU and TPU compiles are left alone.
"""
import jax


def run_once() -> dict:
  """`compiler_options` for jax.jit of a program that runs once."""
  if jax.default_backend() == 'cpu':
    return {'xla_backend_optimization_level': 1}
  return {}
