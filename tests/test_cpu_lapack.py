"""eiw_jax.cpu_lapack: in the scripts (eiw_jax.cli) jaxlib's CPU LAPACK runs with one
OpenBLAS thread, numpy's BLAS keeps its own, and the environment is left as it was;
`import eiw_jax` alone changes nothing of the process."""
import json
import os
import subprocess
import sys

import pytest

# Reads the thread count of each OpenBLAS loaded in the process (scipy's wheels
# export it as scipy_openblas_get_num_threads, numpy's with a 64_ suffix).
_PROBE = r'''
import ctypes, json, os, re, sys
{imports}
import jax.numpy as jnp
jnp.linalg.slogdet(jnp.eye(3))[1].block_until_ready()  # jaxlib's LAPACK is in use
threads = {{}}
for path in sorted(set(re.findall(r'/\S*openblas\S*\.so\S*', open('/proc/self/maps').read()))):
  lib = ctypes.CDLL(path)
  for name, sym in (('numpy', 'scipy_openblas_get_num_threads64_'),
                    ('scipy', 'scipy_openblas_get_num_threads')):
    if hasattr(lib, sym) and ('numpy' in path) == (name == 'numpy'):
      threads[name] = getattr(lib, sym)()
print(json.dumps(dict(threads=threads, env=os.environ.get('OPENBLAS_NUM_THREADS'))))
'''


def _probe(imports: str, env_extra=None) -> dict:
  env = {k: v for k, v in os.environ.items() if k != 'OPENBLAS_NUM_THREADS'}
  env.update(env_extra or {})
  out = subprocess.run([sys.executable, '-c', _PROBE.format(imports=imports)], env=env,
                       check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def probes():
  if not sys.platform.startswith('linux'):
    pytest.skip('reads /proc/self/maps')
  return {'plain': _probe('import numpy'), 'eiw_jax': _probe('from eiw_jax import cli'),
          'library': _probe('import eiw_jax'),
          'user_set': _probe('from eiw_jax import cli', {'OPENBLAS_NUM_THREADS': '2'})}


def test_the_scripts_give_jaxlibs_lapack_one_thread(probes):
  threads = probes['eiw_jax']['threads']
  if 'scipy' not in threads:
    pytest.skip("scipy's LAPACK here is not the scipy-openblas wheel's")
  assert threads['scipy'] == 1
  assert probes['eiw_jax']['env'] is None  # the variable was put back


def test_the_library_import_leaves_lapack_threads_alone(probes):
  threads = probes['library']['threads']
  if 'scipy' not in threads:
    pytest.skip("scipy's LAPACK here is not the scipy-openblas wheel's")
  # as many threads as scipy starts on its own (one per core)
  assert threads['scipy'] == _probe('import numpy, scipy.linalg')['threads']['scipy']


def test_numpys_blas_and_the_users_setting_are_left_alone(probes):
  plain, ours, user = probes['plain']['threads'], probes['eiw_jax']['threads'], \
      probes['user_set']['threads']
  if 'numpy' in plain:
    assert ours['numpy'] == plain['numpy']
  if 'scipy' in user:
    assert user['scipy'] == 2
