"""Checkpoints of the training state; the one module that knows orbax.

A workdir holds:

  config.json                 the run's config, human readable
  checkpoints/<step>/         one orbax checkpoint per saved step, with
                              checksums.json (eiw_jax.train.checksums) once committed
  corrupt_checkpoints/<step>-<n>/
                              steps that `restore` found unreadable, moved out
                              of orbax's sight (kept for inspection)

The state is any pytree of jax arrays (a flax.struct TrainState, dicts, optax
NamedTuple states, typed PRNG keys from `jax.random.key`, which orbax stores as
their key data and restores as typed keys with the same impl).
"""
from __future__ import annotations

import errno
import os
import re
import shutil
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from eiw_jax.train import checksums, messages, resume, run_config
from eiw_jax.errors import UserError

# Written by orbax as the last file of a step (before the atomic rename on a
# local disk; as the commit itself on object stores).
_COMMIT_MARKER = 'commit_success.txt'
_STEP_NAME = re.compile(r'^(0|[1-9][0-9]*)$')
# orbax's item directory inside a step (CheckpointManager with one unnamed item).
_ITEM = 'default'
_MISMATCH = 'tree structures do not match'


def has_checkpoint(workdir: str) -> bool:
  """Whether `workdir` holds at least one committed checkpoint."""
  return bool(_committed_steps(epath.Path(workdir) / 'checkpoints'))


class Checkpointer:
  """Saves and restores the training state under `<workdir>/checkpoints`.

  Guarantees (orbax 0.12.x on a local disk or an object store):

  * A save is atomic: orbax writes `<step>.orbax-checkpoint-tmp-*` and renames it
    once complete (on object stores it writes the commit marker last). A process
    killed mid-save leaves the older checkpoints as they were; the unfinished one
    is ignored, and removed by the next writable `Checkpointer`.
  * Old steps are deleted (beyond `max_to_keep`) only after a newer one has
    committed: once a save has committed, a committed checkpoint is always on disk.
  * Once committed, each file's size and SHA-256 go to the step's `checksums.json`
    (as soon as the save is seen finished: `seal_finished`, else `wait`); `restore`
    verifies them first, and says so when a step lacks them while others have them.
  * `restore` tries the newest step first and falls back to older ones; a step
    that fails is moved to `corrupt_checkpoints/` (once an older step was restored),
    so later saves never garbage-collect the good step in its place. Keep
    `max_to_keep >= 2` to survive damage to the newest checkpoint. A step whose
    parameters have other names or shapes is another model: a UserError at once.
  * `read_only=True` (evaluation beside a running trainer) writes, moves and
    deletes nothing under the workdir.

  Saves are asynchronous: `save` returns once the arrays are copied off the device
  (the state may then be donated); `wait` blocks until committed.

  With `config` given, `<workdir>/config.json` (run_config.SavedConfig) is compared
  with it first (a structural difference is a UserError before anything is
  written), written when the workdir has no checkpoint yet, and otherwise only
  once a checkpoint was restored with it (or saved).
  """

  def __init__(self, workdir: str, *, max_to_keep: Optional[int] = 3,
               config=None, read_only: bool = False):
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f'max_to_keep must be >= 1 or None, got {max_to_keep}')
    # orbax needs absolute paths; users give relative ones (--workdir=runs/x).
    self._workdir = epath.Path(os.path.abspath(os.fspath(workdir)))
    self._dir = self._workdir / 'checkpoints'
    self._corrupt_dir = self._workdir / 'corrupt_checkpoints'
    self._read_only = read_only
    self._unsealed = []  # steps saved here whose checksums are not written yet
    self._config = None if config is None else run_config.SavedConfig(
        os.fspath(self._workdir), config, bool(_committed_steps(self._dir)))  # Writes nothing.
    messages.quiet_orbax_logs()
    self._reader = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    self._manager = None  # Saves and deletes: never opened read-only.
    if read_only:
      return
    self._manager = ocp.CheckpointManager(
        self._dir,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            cleanup_tmp_directories=True))
    if self._config is not None and not _committed_steps(self._dir):
      self._config.write()

  def latest_step(self) -> Optional[int]:
    """The newest committed step, or None (its files may be damaged: see `restore`)."""
    steps = _committed_steps(self._dir)
    return steps[-1] if steps else None

  def all_steps(self) -> list[int]:
    """Committed steps, oldest first."""
    return _committed_steps(self._dir)

  def restore(self, abstract_state, *, step: Optional[int] = None,
              adapters=()) -> Optional[tuple[Any, int]]:
    """Restores the newest readable checkpoint.

    Args:
      abstract_state: pytree of `jax.ShapeDtypeStruct` (with `.sharding` set,
        so arrays land directly on the mesh) or of concrete arrays, with the
        structure of the saved state.
      step: restore exactly this step (no fall back) instead of the newest.
      adapters: for a checkpoint whose tree structure differs from `abstract_state`'s
        (saved under other optimiser settings), tried in order: `(description,
        abstract_fn, convert)`: `abstract_fn()` gives the structure to restore,
        `convert(state)` makes it the one wanted; the first that fits is used and
        its description printed in one line.

    Returns:
      `(state, step)`, or None when the workdir holds no checkpoint.

    Raises:
      UserError: checkpoints exist but none (or not `step`) is readable, or a step
        holds another model (parameters of other shapes: no older step would fit).
    """
    self.wait()
    if step is not None:
      try:
        return self._restore_step(step, abstract_state, adapters, self.all_steps()), step
      except UserError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        raise UserError(
            f'checkpoint step {step} in {self._dir} is unreadable '
            f'({messages.one_line(e)}); pick another step (committed: '
            f'{self.all_steps()})') from e
    steps = sorted(_step_dirs(self._dir), reverse=True)
    if not steps:
      return None
    failed = []
    for i, s in enumerate(steps):
      try:
        state = self._restore_step(s, abstract_state, adapters, steps)
      except UserError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        failed.append((s, messages.one_line(e)))
        then = (f'falling back to step {steps[i + 1]}' if i + 1 < len(steps)
                else 'no older checkpoint to fall back to')
        messages.warn(f'checkpoint step {s} is unreadable ({messages.one_line(e)}); {then}')
        continue
      self._move_aside([f for f, _ in failed])
      if self._config is not None:
        self._config.accept(s)
        if not self._read_only and self._config.saved_text is None:
          self._config.write()
      return state, s
    newest, reason = failed[0]
    raise UserError(
        f'no readable checkpoint in {self._dir} (newest, step {newest}: '
        f'{reason}); check that the config matches the run that wrote them, '
        'or use a new --workdir')

  def save(self, step: int, state, *, force: bool = False) -> bool:
    """Starts an asynchronous save of `state` as `step`.

    Returns False (and saves nothing) when `step` is not newer than the
    latest step, unless `force`. Keeps the newest `max_to_keep` steps.
    """
    if self._manager is None:
      raise ValueError(f'{self._dir} was opened read-only')
    self.wait()  # orbax would wait too; the previous step gets its checksums
    saved = self._manager.save(
        int(step), args=ocp.args.StandardSave(state), force=force)
    if saved:
      self._unsealed.append(int(step))
    if saved and self._config is not None and self._config.stale:
      self._config.write()
    return saved

  def wait(self):
    """Blocks until pending saves are committed (raises if one failed) and
    records the checksums of the steps committed since."""
    if self._manager is None:
      return
    self._manager.wait_until_finished()
    steps, self._unsealed = self._unsealed, []
    if jax.process_index() == 0:
      for s in steps:
        path = self._dir / str(s)
        if (path / _COMMIT_MARKER).exists() and not checksums.has(os.fspath(path)):
          checksums.write(os.fspath(path))
    _sync('eiw_jax_checkpoint_checksums')

  def seal_finished(self):
    """Records the checksums of steps whose save has committed, without waiting
    (one process: a pod seals at the next `wait`, when its processes meet)."""
    if (self._unsealed and jax.process_count() == 1
        and not self._manager.is_saving_in_progress()):
      self.wait()

  def close(self):
    """Waits for pending saves and releases orbax's resources."""
    self._reader.close()
    if self._manager is None:
      return
    self.wait()
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info):
    self.close()

  def _restore_step(self, step: int, abstract_state, adapters, others):
    path = self._dir / str(step)
    if not path.is_dir():
      raise FileNotFoundError(f'no directory {path}')
    if not (path / _COMMIT_MARKER).exists():
      raise FileNotFoundError(f'no {_COMMIT_MARKER}: the save never finished')
    if not checksums.verify(os.fspath(path)):  # raises ValueError on damage
      self._flag_unverified(step, others)
    self._check_fits(step, abstract_state)
    read = lambda target: self._reader.restore(
        path / _ITEM, args=ocp.args.StandardRestore(target))
    try:
      return read(abstract_state)
    except ValueError as e:
      if _MISMATCH not in str(e) or not adapters:
        raise
      mismatch = e
    for description, abstract_fn, convert in adapters:
      try:
        state = read(abstract_fn())
      except ValueError as e:
        if _MISMATCH in str(e):
          continue
        raise
      messages.note(f'step {step} was saved {description}')
      return convert(state)
    raise mismatch

  def _flag_unverified(self, step: int, others):
    """A step without checksums.json while others have one: deleted, or the run was
    killed between the save and its checksums. Said, then restored unverified."""
    sealed = [s for s in others if s != step and checksums.has(os.fspath(self._dir / str(s)))]
    if sealed:
      messages.warn(
          f'checkpoint step {step} has no {checksums.FILENAME} although steps {sorted(sealed)} '
          'have one (deleted, or the run was killed right after saving it): restoring it '
          f'unverified; if it is damaged, move {self._dir / str(step)} away and rerun')

  def _check_fits(self, step: int, abstract_state):
    """Raises UserError when the step's parameters have other names or shapes than
    `abstract_state`'s: another model (an edited config.json, a wrong --config), which
    no older step of the workdir would fit either."""
    try:
      meta = self._reader.metadata(self._dir / str(step) / _ITEM)
      meta = getattr(meta, 'item_metadata', meta)
      saved = {m.name: tuple(m.shape) for m in jax.tree.leaves(meta)
               if hasattr(m, 'name') and hasattr(m, 'shape')}
    except Exception:  # pylint: disable=broad-except  # unreadable: restoring will say
      return
    differences = resume.model_differences(saved, abstract_state)
    if differences:
      raise UserError(
          f'checkpoint step {step} in {self._dir} holds another model than the config '
          f'({differences[0]}); pass the config the run was trained with (an unedited '
          'config.json, or the same --config and overrides), or use a new --workdir')

  def _move_aside(self, steps: list[int]):
    """Moves failed steps out of orbax's sight so GC never counts them."""
    if not steps or self._read_only:
      return
    if jax.process_index() == 0:
      self._corrupt_dir.mkdir(parents=True, exist_ok=True)
      for step in steps:
        n = 1
        while (self._corrupt_dir / f'{step}-{n}').exists():
          n += 1
        dest = self._corrupt_dir / f'{step}-{n}'
        try:
          (self._dir / str(step)).rename(dest)
        except OSError as e:  # checkpoints/ links to another file system
          if e.errno != errno.EXDEV:
            raise
          shutil.move(os.fspath(self._dir / str(step)), os.fspath(dest))
        messages.warn(f'moved unreadable checkpoint step {step} to {dest}')
    _sync('eiw_jax_checkpoint_move_aside')
    self._manager.reload()


def _step_dirs(directory: epath.Path) -> list[int]:
  """Steps with a final (non-temporary) directory, committed or not."""
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir()
                if _STEP_NAME.match(p.name) and p.is_dir())


def _committed_steps(directory: epath.Path) -> list[int]:
  return [s for s in _step_dirs(directory)
          if (directory / str(s) / _COMMIT_MARKER).exists()]


def _sync(name: str):
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
