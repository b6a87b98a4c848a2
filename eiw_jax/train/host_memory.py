"""Giving the host heap that compiles leave behind back to the system.

Compiling a large program, or loading it from the persistent compilation cache,
allocates gigabytes of short-lived host memory through malloc. glibc keeps
most of it after it is freed (fragmented heaps, one per compiling thread), so
the process stays that much larger for the whole run, and the training step's
own buffers come on top. For the paper's model on CPU (batch 8), loading the
initialisation program and running it left 3.8 GB resident, of which
`malloc_trim` returned 1.8 GB (the state itself is 1.6 GB).
"""
import ctypes
import sys


def release_free_heap() -> bool:
  """Returns the heap's free pages to the system (glibc's malloc_trim); False
  where there is no such call (not Linux, or another C library)."""
  if not sys.platform.startswith('linux'):
    return False
  try:
    trim = ctypes.CDLL('libc.so.6').malloc_trim
  except (OSError, AttributeError):
    return False
  trim(0)
  return True
