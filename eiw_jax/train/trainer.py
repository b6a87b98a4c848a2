"""The programs of a run, built from its config: mesh, model, optimiser, and the
jitted init and step (one `jax.jit` step over a 1-D device mesh: the batch sharded
along 'data', the state replicated and donated)."""
from __future__ import annotations

import concurrent.futures
import functools
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from eiw_jax import data
from eiw_jax.builder import build
from eiw_jax.train import host_memory, resume, sharding, stored_step, xla_options
from eiw_jax.train.checkpoint import Checkpointer
from eiw_jax.train.optimizer import make_optimizer
from eiw_jax.train.state import TrainState, init_state
from eiw_jax.train.step import train_step


@functools.lru_cache(maxsize=4)
def _programs(key: ml_collections.FrozenConfigDict, mesh):
  """Model, optimiser, the jitted init and step, and the step's compiled forms
  (`Trainer.compile_step`) for one (model, optim, data) config.

  Cached per process, so several runs of the same config in one process (a resume
  after an eval, tests) trace and compile the step once. The init's executable is
  dropped after each use (`Trainer.init`): a run needs it once.
  """
  config = key.as_configdict()
  model, optimizer = build(config), make_optimizer(config.optim)
  replicated = sharding.replicated(mesh)
  init = jax.jit(functools.partial(init_state, model, optimizer, config.optim.ema_decay > 0),
                 out_shardings=replicated,
                 compiler_options=xla_options.run_once(config.model.backbone))
  step_fn = functools.partial(train_step, model, optimizer, config.optim.ema_decay)
  step = jax.jit(step_fn, donate_argnums=0, out_shardings=(replicated, replicated),
                 compiler_options=xla_options.compiler_options(config.model.backbone))
  return model, optimizer, init, step, step_fn, {}  # {}: compiled steps by state signature


class Trainer:
  """Everything a run needs, built from a checked config (config.validate_run):
  mesh, model, optimiser, and the jitted init and step (`_init`, `_step`)."""

  def __init__(self, config, devices=None):
    self.config = config
    self.mesh = sharding.make_mesh(devices)
    sharding.check_batch_size(config.data.batch_size, self.mesh)
    groups = ml_collections.ConfigDict({k: config[k] for k in ('model', 'optim', 'data')})
    self._key = groups.to_json(sort_keys=True)  # the stored step's identity
    self._lowered = {}  # steps lowered and not yet compiled, by state signature
    (self.model, self.optimizer, self._init, self._step, self._step_fn,
     self._compiled) = _programs(ml_collections.FrozenConfigDict(groups), self.mesh)
    self.use_ema = config.optim.ema_decay > 0
    self.data_sharding = sharding.data_sharding(self.mesh)
    self.replicated = sharding.replicated(self.mesh)

  def jit(self, fun):
    """jax.jit with the step's compiler options (xla_options.compiler_options), for the
    programs a run compiles besides its init and step (evaluation, sampling)."""
    options = xla_options.compiler_options(self.config.model.backbone)
    return jax.jit(fun, compiler_options=options)

  def abstract_batch(self):
    d = self.config.data
    return jax.ShapeDtypeStruct((d.batch_size, d.image_size, d.image_size, d.channels),
                                jnp.int32, sharding=self.data_sharding)

  def abstract_state(self):
    """The state's shapes, dtypes and shardings, without computing anything."""
    return self._abstract(self._init)

  def _abstract(self, init):
    """`init`'s output as replicated ShapeDtypeStructs (traced, not run)."""
    shapes = jax.eval_shape(init, jax.random.key(0), self.abstract_batch())
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated), shapes)

  def global_batch(self, local: np.ndarray) -> jax.Array:
    return sharding.put_global_batch(local.astype(np.int32), self.mesh)

  def batches(self, split: data.Split, start_step: int):
    return data.batches(split, self.config.data.batch_size, seed=self.config.train.seed,
                        start_step=start_step, process_index=jax.process_index(),
                        process_count=jax.process_count(),
                        augment=self.config.data.augment)

  def restore_adapters(self):
    """For `Checkpointer.restore`: states saved under other clipping/EMA settings."""
    return resume.adapters(self.config, self._variant_abstract)

  def _variant_abstract(self, config):
    """The abstract state under `config`'s optimiser settings (same model)."""
    return self._abstract(functools.partial(init_state, self.model,
                                            make_optimizer(config.optim),
                                            config.optim.ema_decay > 0))

  def init_or_restore(self, ckpt: Checkpointer, train_split: data.Split) -> TrainState:
    """The newest checkpoint's state, else a fresh init. A restart compiles the step
    (`compile_step`, mostly read from the caches) in a thread while the checkpoint
    loads (paper model, 2-core CPU: 9.2 and 7.5 s side by side, 6.9 and 5.8 s alone)."""
    abstract = self.abstract_state()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      compiling = (pool.submit(self.compile_step, abstract) if ckpt.latest_step() is not None
                   else None)
      restored = ckpt.restore(abstract, adapters=self.restore_adapters())
      if compiling is not None:
        compiling.result()
    if restored is not None:
      state, step = restored
      log(f'resumed from step {step}')
      return state
    first = next(self.batches(train_split, 0))
    return self.init(jax.random.key(self.config.train.seed), self.global_batch(first))

  def init(self, rng, batch) -> TrainState:
    """The data-dependent init on `batch`; the init program's host memory is
    given back (`host_memory`) once it has run. The training step is traced and
    lowered in a thread while the init program compiles (XLA compiles without
    Python's lock), so `compile_step` then only compiles."""
    lowered = self._init.lower(rng, batch)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      lowering = pool.submit(self._lower_step, self.abstract_state())
      state = jax.block_until_ready(lowered.compile()(rng, batch))
      lowering.result()
    del lowered
    self._init.clear_cache()  # it runs once: keep neither its executable nor its heap
    host_memory.release_free_heap()
    return state

  def compile_step(self, state):
    """The training step compiled for `state` (arrays or ShapeDtypeStructs) and
    this config's batch, ahead of the first step, from the stored module when an
    earlier run left one (`stored_step`), with the compiler's host memory given
    back before it runs. Kept per process, like the jitted step, for later runs of
    the same config."""
    signature, lowered = self._lower_step(state)
    if signature not in self._compiled:
      self._compiled[signature] = lowered.compile()
      self._lowered.pop(signature, None)  # compiled: its module is not needed again
      host_memory.release_free_heap()
    return self._compiled[signature]

  def _lower_step(self, state):
    """(signature, the step lowered for `state`'s shapes, or None once compiled)."""
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    signature = (jax.tree.structure(abstract), tuple(jax.tree.leaves(abstract)))
    if signature not in self._compiled and signature not in self._lowered:
      self._lowered[signature] = stored_step.lower(
          self._step_fn, abstract, self.abstract_batch(), identity=self._key,
          out_sharding=self.replicated,
          compiler_options=xla_options.compiler_options(self.config.model.backbone))
    return signature, self._lowered.get(signature)


def log(msg: str) -> None:
  if jax.process_index() == 0:
    tqdm.tqdm.write(msg, file=sys.stderr)
