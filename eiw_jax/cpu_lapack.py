"""One thread for the LAPACK that jaxlib calls on CPU.

On CPU, jnp.linalg (the slogdet of DenseFlow's 1x1 convolutions, LU, triangular
solves) runs as custom calls into scipy's LAPACK, on XLA's own worker threads.
scipy's OpenBLAS then starts threads of its own, one per core, which compete with
XLA's for the same cores: in one training step of the paper's model (2-core Xeon,
batch 8) the 79 LU calls took 1.51 s of thread time instead of 0.016 s, and the
whole step 8.3-8.6 s instead of 7.1 s (fresh processes, alternated). These
matrices are at most a few hundred channels wide, so one thread per call loses
nothing.

`load_single_threaded` loads scipy's LAPACK now, with OPENBLAS_NUM_THREADS=1 for
the moment it loads (OpenBLAS reads it once, when the library is loaded), then
puts the environment back, so numpy's BLAS and child processes keep their
threads. It changes nothing when the variable is already set (the user's
choice) or when scipy's LAPACK is already loaded: set OPENBLAS_NUM_THREADS=1
yourself if you import scipy.linalg before eiw_jax.
"""
import os
import sys

_VAR = 'OPENBLAS_NUM_THREADS'
_LAPACK = 'scipy.linalg.cython_lapack'  # where jaxlib finds its LAPACK on CPU


def load_single_threaded() -> bool:
  """Loads jaxlib's CPU LAPACK with one OpenBLAS thread; False if it was too late
  or the user set the thread count."""
  if _VAR in os.environ or _LAPACK in sys.modules:
    return False
  import numpy  # pylint: disable=g-import-not-at-top,unused-import
  # numpy's own BLAS is loaded above with its threads; scipy's below with one.
  os.environ[_VAR] = '1'
  try:
    import scipy.linalg.cython_lapack  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:  # jaxlib without scipy has no CPU LAPACK to limit
    return False
  finally:
    del os.environ[_VAR]
  return True
