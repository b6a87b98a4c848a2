"""The package by layers: the model library imports nothing of training, no module
imports a layer above its own, and no library module outgrows a file."""
import ast
import json
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), '..')
PACKAGE = os.path.join(ROOT, 'eiw_jax')
# Layers, lowest first (eiw_jax/__init__.py states them).
LAYERS = [('model library', ('errors', 'checked', 'checks', 'nets', 'noise', 'losses', 'bijectors',
                             'shuffle', 'backbones', 'flow', 'dequant', 'model', 'builder', 'api',
                             'introspect', 'distribution')),
          ('data', ('data',)), ('evaluation', ('evaluation',)), ('training', ('train',)),
          ('scripts', ('cli', 'cpu_lapack', 'convert'))]
LAYER = {name: i for i, (_, names) in enumerate(LAYERS) for name in names}


def _modules():
  for root, _, files in os.walk(PACKAGE):
    for f in sorted(files):
      if f.endswith('.py'):
        path = os.path.join(root, f)
        yield os.path.relpath(path, PACKAGE), path


def _top(rel):
  return rel.split(os.sep)[0].removesuffix('.py')


def _module_level_imports(path):
  """eiw_jax sub-package names imported at module level (not inside functions)."""
  tree = ast.parse(open(path).read())
  out = set()
  for node in tree.body:
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('eiw_jax'):
      parts = node.module.split('.')
      out |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
    elif isinstance(node, ast.Import):
      out |= {a.name.split('.')[1] for a in node.names if a.name.startswith('eiw_jax.')}
  return out


def test_no_module_imports_a_layer_above_its_own():
  upward = []
  for rel, path in _modules():
    if rel == '__init__.py':
      continue
    own = LAYER[_top(rel)]
    for name in _module_level_imports(path):
      if LAYER[name] > own:
        upward.append(f'{rel} imports eiw_jax.{name}')
  assert not upward, upward


def test_the_top_level_api_imports_only_the_model_library():
  imported = _module_level_imports(os.path.join(PACKAGE, '__init__.py'))
  assert imported and all(LAYER[n] == 0 for n in imported), imported


def test_importing_eiw_jax_loads_no_training_runtime():
  probe = ('import sys, time; t = time.perf_counter(); import eiw_jax; '
           'import json; print(json.dumps([sorted(m for m in sys.modules if m.split(".")[0] in '
           '("orbax", "optax", "tensorflow_datasets", "diffrax") '
           'or m.startswith("eiw_jax.train")), '
           'time.perf_counter() - t, "scipy.linalg.cython_lapack" in sys.modules]))')
  out = subprocess.run([sys.executable, '-c', probe], check=True, capture_output=True, text=True)
  heavy, seconds, lapack = json.loads(out.stdout.strip().splitlines()[-1])
  assert heavy == [], heavy
  assert not lapack  # no process-wide LAPACK choice made at import (eiw_jax/cli.py makes it)
  assert seconds > 0
  # eiw_jax.load_run brings the runtime in when asked for.
  probe = 'import sys, eiw_jax; eiw_jax.load_run; print("orbax.checkpoint" in sys.modules)'
  out = subprocess.run([sys.executable, '-c', probe], check=True, capture_output=True, text=True)
  assert out.stdout.strip().splitlines()[-1] == 'True'


def test_no_library_module_outgrows_a_file():
  long = {rel: n for rel, path in _modules() if (n := len(open(path).readlines())) > 330}
  assert not long, long
