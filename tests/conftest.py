import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))

# The scripts' persistent compilation cache (eiw_jax/cli.py): in tests, one cache
# under the temp dir shared by the test processes, never the user's ~/.cache.
os.environ.setdefault('EIW_JAX_COMPILATION_CACHE',
                      os.path.join(tempfile.gettempdir(), 'eiw_jax_tests_xla_cache'))
