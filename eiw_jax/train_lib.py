"""Training: state, optimiser, the jitted step, and `train_and_evaluate`.

One `jax.jit` step over a 1-D device mesh: the batch is sharded along 'data',
the state replicated and donated. Per-step randomness is fold_in(rng, step), the
data order a function of (seed, step), so a resumed run repeats an uninterrupted
one exactly. A step whose loss or gradient is not finite leaves the parameters
and optimiser state unchanged and is counted; `train.max_nonfinite_steps` such
steps in a row stop training at exactly that step (checked one step late, so the
host never waits for the device, and before anything of a step is written).
"""
from __future__ import annotations

import concurrent.futures
import functools
import json
import sys
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from eiw_jax import api, config_lib, data, host_memory, sharding
from eiw_jax import multihost, resume, shuffle, stored_step, xla_options
from eiw_jax import workdir as workdir_lib
from eiw_jax.builder import build, legacy_get, uses_batch_stats, validate
from eiw_jax.checkpoint import Checkpointer
from eiw_jax.errors import UserError
from eiw_jax.model import EIWFlow
from eiw_jax.schedule import flow_lr_schedule


@flax.struct.dataclass
class TrainState:
  step: jax.Array              # int32 [], number of batches consumed
  params: Any
  consts: Any                  # non-trainable (LU permutation and signs, BatchNorm averages)
  opt_state: Any
  ema_params: Any              # EMA of params, or None when off
  rng: jax.Array               # typed PRNG key; step keys are fold_in(rng, step)
  nonfinite_streak: jax.Array  # int32 [], non-finite steps in a row
  nonfinite_total: jax.Array   # int32 [], non-finite steps in all

  def variables(self, use_ema: bool = True) -> dict:
    params = self.ema_params if use_ema and self.ema_params is not None else self.params
    return {'params': params, 'consts': self.consts}


def _shuffle_label(path, unused_leaf) -> str:
  """'solver', 'guider' or 'oracle' for the Shuffle's parameters, else 'flow'."""
  names = [getattr(p, 'key', str(p)) for p in path]
  if any(n.startswith('shuffle_') for n in names):
    for part, label in (('solver', 'solver'), ('guider', 'guider'), ('stats', 'oracle')):
      if part in names:
        return label
  return 'flow'


def make_optimizer(optim) -> optax.GradientTransformation:
  """Adam or Adamax with linear warm-up to a constant rate, optional global-norm clip,
  and an optional fine-tuning phase at `optim.finetune_lr` (`eiw_jax.schedule`).

  With `optim.shuffle_optimizer='sgd'` (the default) the Shuffle's solver and the
  oracle's statistics are updated by plain SGD of their own, at `optim.shuffle_lr`
  and `optim.oracle_rate`, until `optim.shuffle_freeze_after` steps (0: never),
  and the guider by Adam at `optim.guider_lr` (its target moves with the flow, and
  at the flow's rate it would need thousands of steps to learn it).
  Adam and Adamax ignore a gradient's scale, so under them λ could not matter for
  the solver, which sees only λ·KL; under SGD Q's logits relax toward the
  guider's mean P with a time constant of about 4 / (λ · shuffle_lr) steps (a
  normalised solver input at init). 'shared' puts them on the flow's optimiser
  (the behaviour of runs saved before the option existed).
  """
  schedule = flow_lr_schedule(optim)
  if optim.name == 'adamax':
    opt = optax.adamax(schedule, b1=optim.b1, b2=optim.b2)
  elif optim.name == 'adam':
    opt = optax.adam(schedule, b1=optim.b1, b2=optim.b2)
  else:
    raise UserError(f"optim.name must be 'adam' or 'adamax', got {optim.name!r}")
  if legacy_get({'optim': optim}, 'optim.shuffle_optimizer') == 'sgd':
    freeze = int(optim.get('shuffle_freeze_after', 0))

    def sgd(rate):
      if freeze <= 0:
        return optax.sgd(rate)
      return optax.sgd(lambda step: jnp.where(step < freeze, rate, 0.0))

    opt = optax.multi_transform(
        {'flow': opt, 'solver': sgd(optim.shuffle_lr), 'oracle': sgd(optim.oracle_rate),
         'guider': optax.adam(optim.guider_lr)},
        lambda params: jax.tree_util.tree_map_with_path(_shuffle_label, params))
  if optim.grad_clip > 0:
    opt = optax.chain(optax.clip_by_global_norm(optim.grad_clip), opt)
  return opt


def init_state(model: EIWFlow, optimizer, use_ema: bool, rng, first_batch) -> TrainState:
  """Data-dependent init on the first global batch (the same for any device count)."""
  init_rng, state_rng = jax.random.split(rng)
  variables = api.init(model, init_rng, first_batch)
  params = variables['params']
  zero = jnp.zeros((), jnp.int32)
  return TrainState(step=zero, params=params, consts=variables.get('consts', {}),
                    opt_state=optimizer.init(params), ema_params=params if use_ema else None,
                    rng=state_rng, nonfinite_streak=zero, nonfinite_total=zero)


def train_step(model: EIWFlow, optimizer, ema_decay: float, state: TrainState, batch,
               batch_stats: bool = False):
  """One update. Returns (new state, metrics). Non-finite steps change nothing but counters.

  batch_stats: the model normalises with batch statistics in training (see
  builder.uses_batch_stats); their running averages in `consts` are updated.
  """
  rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    variables = {'params': params, 'consts': state.consts}
    if batch_stats:
      loss, metrics, consts = api.loss_with_batch_stats(model, variables, batch, rng)
      return loss, (metrics, consts)
    loss, metrics = api.loss(model, variables, batch, rng)
    return loss, (metrics, state.consts)

  (loss, (metrics, consts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
  ema = state.ema_params
  if ema is not None:
    ema = keep(jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, ema, params), ema)
  bad = (~finite).astype(jnp.int32)
  new_state = state.replace(
      step=state.step + 1, params=keep(params, state.params),
      consts=keep(consts, state.consts) if batch_stats else state.consts,
      opt_state=keep(opt_state, state.opt_state), ema_params=ema,
      nonfinite_streak=(state.nonfinite_streak + 1) * bad,
      nonfinite_total=state.nonfinite_total + bad)
  flow_consts = state.consts.get('flow', {})
  if model.flow.shuffle:
    live = shuffle.transition_scores(model.flow, new_state.params['flow'])  # once, for both
    new_consts = shuffle.refresh_orders(model.flow, new_state.params['flow'],
                                        new_state.consts.get('flow', {}), new_state.step, live)
    if 'flow' in new_state.consts:  # a step keeps the state's structure
      new_state = new_state.replace(consts={**new_state.consts, 'flow': new_consts})
    metrics.update(shuffle.split_changes(
        model.flow, {'params': state.params['flow'], 'consts': flow_consts},
        {'params': new_state.params['flow'], 'consts': new_consts}, live))
  metrics = dict(metrics, grad_norm=grad_norm, nonfinite=bad,
                 nonfinite_total=new_state.nonfinite_total,
                 nonfinite_streak=new_state.nonfinite_streak)
  return new_state, metrics


@functools.lru_cache(maxsize=4)
def _programs(key: str, mesh):
  """Model, optimiser, the jitted init and step, and the step's compiled forms
  (`Trainer.compile_step`) for one (model, optim, data) config.

  Cached per process, so several runs of the same config in one process (a resume
  after an eval, tests) trace and compile the step once. The init's executable is
  dropped after each use (`Trainer.init`): a run needs it once.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(json.loads(key))
  model, optimizer = build(config), make_optimizer(config.optim)
  replicated = sharding.replicated(mesh)
  init = jax.jit(functools.partial(init_state, model, optimizer, config.optim.ema_decay > 0),
                 out_shardings=replicated,
                 compiler_options=xla_options.run_once(config.model.backbone))
  step_fn = functools.partial(train_step, model, optimizer, config.optim.ema_decay,
                              batch_stats=uses_batch_stats(config))
  step = jax.jit(step_fn, donate_argnums=0, out_shardings=(replicated, replicated),
                 compiler_options=xla_options.compiler_options(config.model.backbone))
  return model, optimizer, init, step, step_fn, {}  # {}: compiled steps by state signature


class Trainer:
  """Everything a run needs, built from a config: mesh, model, optimiser, and the
  jitted init and step (`_init`, `_step`)."""

  def __init__(self, config, workdir: str, devices=None):
    validate(config)
    self.config, self.workdir = config, workdir
    self.mesh = sharding.make_mesh(devices)
    sharding.check_batch_size(config.data.batch_size, self.mesh)
    key = json.dumps({k: config[k].to_dict() for k in ('model', 'optim', 'data')},
                     sort_keys=True)
    self._key = key
    self._lowered = {}  # steps lowered and not yet compiled, by state signature
    (self.model, self.optimizer, self._init, self._step, self._step_fn,
     self._compiled) = _programs(key, self.mesh)
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
                        augment=self.config.data.get('augment', 'none'))

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


def _check_streak(step: int, streak, limit: int) -> None:
  """Raises once `limit` non-finite steps in a row end at `step`."""
  streak = int(streak)
  if streak < limit:
    return
  if step == streak:  # not one finite step: no learning rate is to blame
    raise UserError(
        f'stopped at step {step}: every step was non-finite (loss or gradient NaN/inf at the '
        'initial parameters, whatever the learning rate); check the data and the model.* '
        'values against the config defaults')
  raise UserError(
      f'stopped at step {step}: {streak} non-finite steps in a row (loss or gradient '
      f'NaN/inf; parameters unchanged since step {step - streak}, checkpoints kept); '
      f'lower --config.optim.lr or set --config.optim.grad_clip, then rerun to resume')


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (or resumes) in `workdir`; returns the last logged metrics.

  Everything is checked (config keys and values, devices, both data splits) before
  the workdir is created. One run at a time per workdir (a second is refused). SIGTERM
  saves a checkpoint at the current step and returns normally (train.py then exits 0).
  A full disk or a workdir that vanishes is one line (UserError); the checkpoints
  already written stay usable. With `train.max_minutes` > 0, training stops at
  the first logged step after that many minutes of this process's training
  loop, evaluates and saves there (a rerun trains on from it).
  """
  config_lib.validate_run(config)
  if config.train.distributed:
    multihost.initialize(config.train)
  trainer = Trainer(config, workdir)
  train_split = data.load_split(config.data, 'train')
  test_split = data.load_split(config.data, 'test')  # fail now, not at the first eval
  for name, split in (('train', train_split), ('test', test_split)):
    if len(split.images) < config.data.batch_size:
      raise UserError(f'data.batch_size={config.data.batch_size} exceeds the '
                      f'{len(split.images)} examples of the {name} split; lower '
                      '--config.data.batch_size')
  workdir_lib.make(workdir)
  lock = workdir_lib.Lock(workdir) if jax.process_index() == 0 else None
  if lock is not None:
    lock.acquire()
  try:
    return _train(config, workdir, trainer, train_split, test_split)
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    problem = workdir_lib.storage_problem(e)
    if problem is None:
      raise
    raise UserError(f'could not write to {workdir} ({problem}); free disk space or restore '
                    'the workdir, then rerun the same command to resume from its newest '
                    'complete checkpoint') from e
  finally:
    if lock is not None:
      lock.release()


def _train(config, workdir: str, trainer: Trainer, train_split, test_split) -> dict:
  # pylint: disable=g-import-not-at-top
  from eiw_jax import train_monitor
  ckpt = Checkpointer(workdir, max_to_keep=config.train.keep_checkpoints, config=config)
  t = config.train
  try:
    state = trainer.init_or_restore(ckpt, train_split)
  except BaseException:
    ckpt.close()
    raise
  start, total = int(state.step), int(t.num_steps)
  if start >= total:
    log(f'step {start} already reaches train.num_steps={total}: nothing to train; raise '
        '--config.train.num_steps to continue')
  step_fn = trainer.compile_step(state)
  monitor = train_monitor.Monitor(trainer, workdir, start, total, test_split)
  batches = trainer.batches(train_split, start)
  budget = multihost.TimeBudget(60 * float(t.get('max_minutes', 0)))
  last = {}
  pending = None  # (step, streak) of the previous step, checked one step late
  failed = False
  try:
    watchdog = multihost.Watchdog(t.get('heartbeat_timeout_s', 100) / 2)  # several processes
    with multihost.Preemption() as preemption, watchdog:
      for step in range(start + 1, total + 1):
        t0 = time.perf_counter()
        batch = trainer.global_batch(next(batches))
        input_s = time.perf_counter() - t0
        state, metrics = step_fn(state, batch)
        monitor.tick(input_s, metrics)
        if pending is not None:  # the device works on this step meanwhile
          _check_streak(*pending, t.max_nonfinite_steps)
        pending = (step, metrics['nonfinite_streak'])
        out_of_time = step % t.log_every == 0 and budget.spent()
        eval_due = step % t.eval_every == 0 or step == total or out_of_time
        log_due = eval_due or step % t.log_every == 0
        stop = preemption.requested(step)
        save_due = step % t.checkpoint_every == 0 or step == total or stop or out_of_time
        if log_due or save_due:  # these wait for the step anyway: check it first
          _check_streak(*pending, t.max_nonfinite_steps)
          pending = None
        if log_due:
          last = monitor.log(step, metrics, monitor.evaluate(step, state) if eval_due else {})
        if save_due:
          ckpt.save(step, state, force=True)
        if stop:
          ckpt.wait()
          log(f'SIGTERM: saved a checkpoint at step {step}; rerun the same command to resume')
          break
        if out_of_time:
          ckpt.wait()
          log(f'train.max_minutes={t.max_minutes} reached: stopped at step {step} of {total}, '
              'evaluated and saved; rerun the same command to train on')
          break
  except jax.errors.JaxRuntimeError as e:
    failed = True
    multihost.exit_on_peer_failure(e)  # several processes: one line, exit 1
    raise
  except BaseException:
    failed = True
    raise
  finally:
    try:
      ckpt.close()
    except Exception:  # pylint: disable=broad-except
      if not failed:  # else the first error is the one to report
        raise
    finally:
      monitor.close()
  return last
