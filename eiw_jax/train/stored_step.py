"""The training step kept as StableHLO (`jax.export`) beside the compilation cache.

JAX's persistent compilation cache skips the compile of a program an earlier run
compiled, but a run must still trace and lower the program to find it in the cache:
for the paper's model on a 2-core CPU that is 14 s of a 50 s restart. `lower`
exports the lowered training step once, to `<compilation cache>/steps/`, and
every run compiles the step from that module, the first one included, so the
cache's key is the same each time and a restart reads the module instead of
tracing the model.

A stored step is found again by a fingerprint of everything its program depends on:
the model, optimiser and data config, the state's and batch's shapes, dtypes and
shardings, the devices, the jax and jaxlib versions, and the source of the eiw_jax
package (an edited module traces afresh). It is used in single-process runs only
(a pod traces as before). An unreadable or stale file is traced afresh and
replaced; the file is written atomically, so two runs sharing a cache directory
never read half of one.

Typed PRNG keys cannot be serialised: the stored program takes and returns their
key data, and the compiled `Step` wraps them back, so it is called exactly as the
jitted step (state, batch) -> (state, metrics), with the state donated.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import uuid
from typing import Callable, Optional

import jax
import jaxlib

_SUBDIR = 'steps'


@functools.lru_cache(maxsize=1)
def _package_source_digest() -> str:
  """sha256 over the eiw_jax package's Python sources (paths and contents)."""
  root = os.path.dirname(os.path.abspath(__file__))
  digest = hashlib.sha256()
  for folder, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(files):
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        digest.update(os.path.relpath(path, root).encode())
        with open(path, 'rb') as f:
          digest.update(f.read())
  return digest.hexdigest()


def fingerprint(identity: str, abstract_state, abstract_batch) -> str:
  """The file name (hex digest) of the step for `identity` (the config) and these
  argument shapes, on this process's devices and software."""
  leaves, treedef = jax.tree.flatten((abstract_state, abstract_batch))
  structure = re.sub(r' at 0x[0-9a-f]+', '', str(treedef))  # no addresses of this process
  parts = [identity, structure, jax.__version__, jaxlib.__version__,
           _package_source_digest(), jax.default_backend(),
           ','.join(sorted({d.device_kind for d in jax.devices()})), str(jax.device_count())]
  parts += [f'{x.shape}{x.dtype}{x.sharding}' for x in leaves]
  return hashlib.sha256('\n'.join(parts).encode()).hexdigest()[:32]


def directory() -> Optional[str]:
  """Where steps are stored: `steps/` in JAX's compilation cache directory (None
  when the cache is off, or in a multi-process run)."""
  cache = jax.config.jax_compilation_cache_dir
  if not cache or jax.process_count() > 1:
    return None
  return os.path.join(os.path.expanduser(cache), _SUBDIR)


def _load(path: str):
  try:
    with open(path, 'rb') as f:
      return jax.export.deserialize(bytearray(f.read()))
  except Exception:  # pylint: disable=broad-except  # missing or unreadable: trace again
    return None


def _store(path: str, exported) -> None:
  """Writes `exported` to `path` atomically, with the umask's permissions; a read-only
  or full cache (or no flatbuffers to serialise with) only costs the next run a trace."""
  tmp = f'{path}.{os.getpid()}.{uuid.uuid4().hex}.tmp'
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), 'wb') as f:
      f.write(exported.serialize())
    os.replace(tmp, path)
  except (OSError, ImportError):
    try:
      os.remove(tmp)
    except OSError:
      pass


class _Flat:
  """A state pytree <-> its list of leaves with key data in place of typed keys."""

  def __init__(self, abstract_state):
    leaves, self._treedef = jax.tree.flatten(abstract_state)
    self._keys = {i: x.dtype._impl for i, x in enumerate(leaves)  # pylint: disable=protected-access
                  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)}

  def flatten(self, state) -> list:
    return [jax.random.key_data(x) if i in self._keys else x
            for i, x in enumerate(jax.tree.leaves(state))]

  def unflatten(self, data: list):
    return jax.tree.unflatten(self._treedef, [
        jax.random.wrap_key_data(x, impl=self._keys[i]) if i in self._keys else x
        for i, x in enumerate(data)])


class Step:
  """A compiled training step, called as the jitted one: (state, batch) -> (state,
  metrics), the state donated. `compiled` is the XLA executable (memory_analysis,
  cost_analysis), which takes the state's leaves with key data for keys."""

  def __init__(self, compiled, flat: _Flat):
    self.compiled, self._flat = compiled, flat

  def __call__(self, state, batch):
    data, metrics = self.compiled(self._flat.flatten(state), batch)
    return self._flat.unflatten(data), metrics

  def memory_analysis(self):
    return self.compiled.memory_analysis()


def lower(step_fn: Callable, abstract_state, abstract_batch, *, identity: str,
          out_sharding, compiler_options: dict) -> 'Lowered':
  """`step_fn` ((state, batch) -> (state, metrics), not jitted) lowered for these
  arguments with the state donated and every output placed by `out_sharding`,
  from the stored module when there is one (see the module docstring); its
  `compile()` gives the `Step`. Lowering is Python work and compiling is XLA's,
  so a caller can lower in one thread while another program compiles."""
  flat = _Flat(abstract_state)
  flat_abstract = [jax.ShapeDtypeStruct(d.shape, d.dtype, sharding=x.sharding)
                   for x, d in zip(jax.tree.leaves(abstract_state),
                                   jax.eval_shape(flat.flatten, abstract_state))]
  folder = directory()
  path = folder and os.path.join(
      folder, fingerprint(identity, abstract_state, abstract_batch) + '.bin')
  exported = _load(path) if path else None
  if exported is None:
    def flat_step(data, batch):
      new_state, metrics = step_fn(flat.unflatten(data), batch)
      return flat.flatten(new_state), metrics

    exported = jax.export.export(jax.jit(flat_step, out_shardings=out_sharding))(
        flat_abstract, abstract_batch)
    if path:
      _store(path, exported)
  run = jax.jit(exported.call, donate_argnums=0, compiler_options=compiler_options)
  return Lowered(run.lower(flat_abstract, abstract_batch), flat)


class Lowered:
  """A lowered training step (`lower`); `compile()` gives the `Step`."""

  def __init__(self, lowered, flat: _Flat):
    self._lowered, self._flat = lowered, flat

  def compile(self) -> Step:
    return Step(self._lowered.compile(), self._flat)
