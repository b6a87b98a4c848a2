"""eiw_jax.train.host_memory: freed heap goes back to the system; `make demo`'s huge pages."""
import os
import platform
import shutil
import subprocess
import sys

import pytest

_ROOT = os.path.join(os.path.dirname(__file__), '..', '..')

# Fills the heap with 64 MB of small blocks, frees all but the last (which pins the
# heap's top, so that free() alone cannot shrink it), then asks for the pages back.
_SCRIPT = r'''
import ctypes
from eiw_jax.train import host_memory
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


# A jitted program whose 64 MB result XLA:CPU allocates at every call (and frees when
# it is dropped), as a step's buffers are; prints the page faults of 5 calls after a
# warm-up.
_STEP_FAULTS = r'''
import resource, jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sin(jnp.outer(x, x)))
x = jnp.linspace(0.0, 1.0, 4096)
f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
  f(x).block_until_ready()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


def _demo_env(tunables: str) -> str:
  """GLIBC_TUNABLES as `make demo` gives its training command, from a user's `tunables`."""
  env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  if tunables:
    env['GLIBC_TUNABLES'] = tunables
  lines = subprocess.run(['make', '-n', 'demo', 'DEMO_DIR=/nonexistent'], cwd=_ROOT, env=env,
                         check=True, capture_output=True, text=True).stdout.splitlines()
  train = next(line for line in lines if 'train.py' in line)
  prefix = train.split(' train.py')[0].rsplit(' ', 1)[0]  # what comes before the python
  return subprocess.run(['sh', '-c', f'{prefix} sh -c \'echo "$GLIBC_TUNABLES"\''], env=env,
                        check=True, capture_output=True, text=True).stdout.strip()


def test_make_demo_backs_the_step_buffers_with_huge_pages_and_keeps_the_users_tunables():
  if shutil.which('make') is None:
    pytest.skip('no make')
  assert _demo_env('') == 'glibc.malloc.hugetlb=1'
  assert _demo_env('glibc.malloc.arena_max=2') == 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'


def test_the_huge_pages_tunable_stops_the_steps_page_faults():
  try:
    with open('/sys/kernel/mm/transparent_hugepage/enabled') as f:
      thp = f.read()
  except OSError:
    thp = ''
  # under [always] every large buffer gets huge pages anyway; under [never] none does
  if '[madvise]' not in thp or platform.libc_ver()[0] != 'glibc' or (
      tuple(map(int, platform.libc_ver()[1].split('.')[:2])) < (2, 35)):
    pytest.skip('needs glibc >= 2.35 and transparent huge pages on request (madvise)')
  faults = {}
  for tunables in ('', 'glibc.malloc.hugetlb=1'):
    env = {**os.environ, 'GLIBC_TUNABLES': tunables}
    faults[tunables] = int(subprocess.run([sys.executable, '-c', _STEP_FAULTS], env=env, check=True,
                                          capture_output=True, text=True).stdout.split()[-1])
  # 5 calls x 64 MB in 4 KiB pages is about 80000 faults; in 2 MiB pages, about 160
  assert faults[''] > 20000, faults
  assert faults['glibc.malloc.hugetlb=1'] < faults[''] / 10, faults
