"""`train_and_evaluate`: the training loop of train.py.

Everything is checked before the workdir is created; the data order is a
function of (seed, step), so a resumed run repeats an uninterrupted one exactly.
A fresh run saves step 0 before it logs anything (train/history.py). The workdir
is checked at each log and save: moved or deleted under the run, it stops in one
line instead of writing on at the old path.
`train.max_nonfinite_steps` non-finite steps in a row stop training at exactly
that step (checked one step late, so the host never waits for the device, and
before anything of a step is written).
"""
from __future__ import annotations

import time

import jax

from jax.experimental import multihost_utils

from eiw_jax import data
from eiw_jax.train import config as config_lib
from eiw_jax.errors import UserError
from eiw_jax.train import files, history, init_from, multihost
from eiw_jax.train import workdir as workdir_lib
from eiw_jax.train.checkpoint import Checkpointer, has_checkpoint
from eiw_jax.train.trainer import Trainer, log

_RESUME_FIX = ('free disk space or restore the workdir, then rerun the same command to resume '
               'from its newest complete checkpoint')


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
  saves a checkpoint at the current step and returns normally (train.py then exits 0);
  Ctrl-C saves likewise and then raises `multihost.Interrupted`. A full disk or a
  workdir that vanishes is one line (UserError); the checkpoints already written
  stay usable. A workdir whose checkpoints are gone is not started over unless
  `train.restart` (train/history.py). With `train.max_minutes` > 0, training stops at
  the first logged step after that many minutes of this process's training loop,
  evaluates and saves there (a rerun trains on from it).
  """
  config_lib.validate_run(config)
  workdir = workdir_lib.expand(workdir)
  if config.train.distributed:
    multihost.initialize(config.train)
  trainer = Trainer(config)
  start_from = bool(config.train.init_from) and not has_checkpoint(workdir)
  if start_from:
    source = init_from.source_config(config, workdir)
    init_from.check_structure(trainer.abstract_state().variables(use_ema=False),
                              Trainer(source).abstract_state().variables(use_ema=False),
                              config.train.init_from)
  train_split = data.load_split(config.data, 'train')
  test_split = data.load_split(config.data, 'test')  # fail now, not at the first eval
  for name, split in (('train', train_split), ('test', test_split)):
    if len(split.images) < config.data.batch_size:
      raise UserError(f'data.batch_size={config.data.batch_size} exceeds the '
                      f'{len(split.images)} examples of the {name} split; lower '
                      '--config.data.batch_size')
  workdir_lib.make(workdir)
  main = jax.process_index() == 0
  lock = workdir_lib.Lock(workdir) if main else None
  if lock is not None:
    lock.acquire()
  try:
    with files.guard(f'to {workdir}', _RESUME_FIX):
      history.check(workdir, has_checkpoint(workdir), config.train.restart, move=main)
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices('eiw_jax_history')
      return _train(config, workdir, trainer, train_split, test_split, start_from)
  finally:
    if lock is not None:
      lock.release()


def _train(config, workdir: str, trainer: Trainer, train_split, test_split,
           start_from: bool) -> dict:
  # pylint: disable=g-import-not-at-top
  from eiw_jax.train import monitor as train_monitor
  ckpt = Checkpointer(workdir, max_to_keep=config.train.keep_checkpoints, config=config)
  t = config.train
  place = workdir_lib.identity(workdir)
  try:
    fresh = ckpt.latest_step() is None
    state = trainer.init_or_restore(ckpt, train_split)
    if start_from:
      state, note = init_from.load(trainer, state)
      log(note)
    if fresh:  # step 0 first: a workdir with metrics always has a checkpoint
      ckpt.save(0, state, force=True)
    start, total = int(state.step), int(t.num_steps)
    if jax.process_index() == 0:
      history.check_data(workdir, {'train': train_split, 'test': test_split}, start)
    step_fn = trainer.compile_step(state)
    ckpt.wait()
    workdir_lib.check_in_place(workdir, place, start)  # before the monitor makes its files
  except BaseException as e:
    if isinstance(e, jax.errors.JaxRuntimeError):  # a peer died during the start-up
      multihost.exit_on_peer_failure(e)
    ckpt.close()
    raise
  if start >= total:
    log(f'step {start} already reaches train.num_steps={total}: nothing to train; raise '
        '--config.train.num_steps to continue')
  monitor = train_monitor.Monitor(trainer, workdir, start, total, test_split)
  batches = trainer.batches(train_split, start)
  budget = multihost.TimeBudget(60 * float(t.max_minutes))
  last = {}
  pending = None  # (step, streak) of the previous step, checked one step late
  failed = False
  interrupted = None
  try:
    watchdog = multihost.Watchdog(t.heartbeat_timeout_s / 2)  # several processes
    with multihost.Preemption() as preemption, watchdog:
      for step in range(start + 1, total + 1):
        t0 = time.perf_counter()
        batch = trainer.global_batch(next(batches))
        input_s = time.perf_counter() - t0
        state, metrics = step_fn(state, batch)
        monitor.tick(input_s, metrics)
        ckpt.seal_finished()
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
          workdir_lib.check_in_place(workdir, place, step)
        if log_due:
          last = monitor.log(step, metrics, monitor.evaluate(step, state) if eval_due else {})
        if save_due:
          ckpt.save(step, state, force=True)
        if stop:
          ckpt.wait()
          if preemption.signal == 'SIGINT':
            interrupted = (f'Ctrl-C: saved a checkpoint at step {step}; rerun the same command '
                           'to resume')
          else:
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
  if interrupted:
    raise multihost.Interrupted(interrupted)
  return last
