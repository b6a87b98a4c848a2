"""eiw_jax.host_memory: freed heap goes back to the system."""
import subprocess
import sys

import pytest

# Fills the heap with 64 MB of small blocks, frees all but the last (which pins the
# heap's top, so that free() alone cannot shrink it), then asks for the pages back.
_SCRIPT = r'''
import ctypes
from eiw_jax import host_memory
libc = ctypes.CDLL('libc.so.6')
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss():
  return [int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmRSS')][0]
blocks = [libc.malloc(4096) for _ in range(16384)]
for p in blocks:
  ctypes.memset(p, 1, 4096)
for p in blocks[:-1]:
  libc.free(p)
before = rss()
released = host_memory.release_free_heap()
print(released, before - rss())
'''


def test_release_free_heap_returns_freed_pages():
  if not sys.platform.startswith('linux'):
    pytest.skip('glibc only')
  out = subprocess.run([sys.executable, '-c', _SCRIPT], check=True, capture_output=True,
                       text=True).stdout.split()
  assert out[0] == 'True'
  assert int(out[1]) > 48 * 2**20  # most of the 64 MB
