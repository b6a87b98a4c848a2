"""The installs agree: pyproject's accelerator extras (cuda12, cuda13, tpu) name the
jax that requirements.txt pins, for each Python it pins one for, and the jax this
test runs on lies in the supported range pyproject states. No network."""
import os
import tomllib

import jax
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = os.path.join(os.path.dirname(__file__), '..')
PYTHONS = ('3.11', '3.12', '3.13')  # the Pythons whose pins are compared


def _pyproject():
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    return tomllib.load(f)['project']


def _requirements():
  with open(os.path.join(ROOT, 'requirements.txt')) as f:
    lines = [l.split('#')[0].strip() for l in f]
  return [Requirement(l) for l in lines if l]


def _pinned(requirements, name, python):
  """{version} that `requirements` pin `name` to on `python` (markers evaluated)."""
  out = set()
  for r in requirements:
    if r.name == name and (r.marker is None or r.marker.evaluate({'python_version': python})):
      (spec,) = r.specifier
      assert spec.operator == '==', r
      out.add(spec.version)
  return out


def test_each_accelerator_extra_names_the_pinned_jax():
  requirements, extras = _requirements(), _pyproject()['optional-dependencies']
  for python in PYTHONS:
    (cpu,) = _pinned(requirements, 'jax', python)
    assert _pinned(requirements, 'jaxlib', python) == {cpu}, python
    for extra in ('cuda12', 'cuda13', 'tpu'):
      named = [Requirement(r) for r in extras[extra]]
      assert all(r.name == 'jax' and r.extras == {extra} for r in named), extras[extra]
      assert _pinned(named, 'jax', python) == {cpu}, (extra, python)
  assert extras['cuda'] == ['eiw_jax[cuda12]']  # the old name of cuda12


def test_the_pins_lie_in_the_supported_range_and_so_does_this_jax():
  supported = {Requirement(r).name: Requirement(r).specifier
               for r in _pyproject()['dependencies']}
  requirements = _requirements()
  for python in PYTHONS:
    for name in ('jax', 'jaxlib', 'flax'):
      (version,) = _pinned(requirements, name, python)
      assert version in supported[name], (name, version, python)
  assert Version(jax.__version__) in supported['jax'], jax.__version__
