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

import json
import os
import re
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from eiw_jax.train import checksums, messages, run_config
from eiw_jax.errors import UserError

# Written by orbax as the last file of a step (before the atomic rename on a
# local disk; as the commit itself on object stores).
_COMMIT_MARKER = 'commit_success.txt'
_STEP_NAME = re.compile(r'^(0|[1-9][0-9]*)$')
_CONFIG_FIX = "use a new --workdir, or pass the saved config's values"
# orbax's item directory inside a step (CheckpointManager with one unnamed item).
_ITEM = 'default'
_MISMATCH = 'tree structures do not match'


def has_checkpoint(workdir: str) -> bool:
  """Whether `workdir` holds at least one committed checkpoint."""
  return bool(_committed_steps(epath.Path(workdir) / 'checkpoints'))


class Checkpointer:
  """Saves and restores the training state under `<workdir>/checkpoints`.

  Guarantees (orbax 0.12.x on a local disk or an object store):

  * A save is atomic: orbax writes `<step>.orbax-checkpoint-tmp-*` and renames
    it once complete (or, on object stores, writes the commit marker last). A
    process killed mid-save leaves the previous checkpoints as they were;
    `latest_step` and `restore` ignore the unfinished one and the next
    `Checkpointer` on the workdir removes it.
  * Old steps are deleted (beyond `max_to_keep`) only after a newer step has
    been committed, so once a save has committed there is always at least one
    committed checkpoint on disk, for any `max_to_keep >= 1`.
  * `restore` tries the newest step first and falls back to older ones; a step
    that fails is moved to `corrupt_checkpoints/` (only once an older step was
    restored), so it no longer counts towards `max_to_keep` and later saves
    never garbage-collect the good step in its place.
  * Once a save has committed, the size and SHA-256 of each of its files are
    recorded (`checksums.json` in the step); `restore` verifies them first, so
    a checkpoint damaged afterwards (flipped bytes, a truncated copy) counts as
    unreadable and `restore` falls back. With `max_to_keep=1` there is then
    nothing older to fall back to; keep `max_to_keep >= 2` to survive damage
    to the newest checkpoint.
  * `read_only=True` (evaluation beside a running trainer) never writes,
    moves or deletes anything under the workdir: no cleanup of the trainer's
    unfinished saves, no move of unreadable steps, no config.json.

  Saves are asynchronous: `save` returns once the arrays are copied off the
  device (the state may then be donated); `wait` blocks until committed.

  Config handling: with `config` given, `<workdir>/config.json` is written
  when the workdir has no checkpoint yet, and otherwise only once a checkpoint
  was restored with it (or saved); it is compared with the saved one first
  (train/run_config.py: a structural difference raises UserError before anything
  is written, others are named in one line by `restore`).
  """

  def __init__(self, workdir: str, *, max_to_keep: Optional[int] = 3,
               config=None, read_only: bool = False):
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f'max_to_keep must be >= 1 or None, got {max_to_keep}')
    # orbax needs absolute paths; users give relative ones (--workdir=runs/x).
    self._workdir = epath.Path(os.path.abspath(os.fspath(workdir)))
    self._dir = self._workdir / 'checkpoints'
    self._corrupt_dir = self._workdir / 'corrupt_checkpoints'
    self._config_path = self._workdir / 'config.json'
    self._config_text = None if config is None else run_config.config_to_json(config)
    self._saved_config_text = None
    self._read_only = read_only
    self._unsealed = []  # steps saved here whose checksums are not written yet
    if self._config_text is not None:
      self._saved_config_text = self._check_config()  # Writes nothing.
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
    if self._config_text is not None and not _committed_steps(self._dir):
      self._write_config()

  def latest_step(self) -> Optional[int]:
    """The newest committed step, or None.

    Files of that step may still be damaged; `restore` then falls back.
    """
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
      adapters: for a checkpoint whose tree structure differs from
        `abstract_state`'s (e.g. saved under other optimiser settings), tried
        in order: `(description, abstract_fn, convert)`, where
        `abstract_fn()` gives the structure to restore and `convert(state)`
        turns what was restored into the structure wanted. The first that
        fits is used and its description printed in one line.

    Returns:
      `(state, step)`, or None when the workdir holds no checkpoint.

    Raises:
      UserError: checkpoints exist but none (or not `step`) is readable.
    """
    self.wait()
    if step is not None:
      try:
        return self._restore_step(step, abstract_state, adapters), step
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
        state = self._restore_step(s, abstract_state, adapters)
      except Exception as e:  # pylint: disable=broad-except
        failed.append((s, messages.one_line(e)))
        then = (f'falling back to step {steps[i + 1]}' if i + 1 < len(steps)
                else 'no older checkpoint to fall back to')
        messages.warn(f'checkpoint step {s} is unreadable ({messages.one_line(e)}); {then}')
        continue
      self._move_aside([f for f, _ in failed])
      self._accept_config(s)
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
    if saved and self._config_text != self._saved_config_text:
      self._write_config()
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

  def _restore_step(self, step: int, abstract_state, adapters=()):
    path = self._dir / str(step)
    if not path.is_dir():
      raise FileNotFoundError(f'no directory {path}')
    if not (path / _COMMIT_MARKER).exists():
      raise FileNotFoundError(f'no {_COMMIT_MARKER}: the save never finished')
    checksums.verify(os.fspath(path))  # raises ValueError on damage
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

  def _accept_config(self, step: int):
    """After a restore: names changed settings; config.json now reflects them."""
    if self._config_text is None:
      return
    if self._saved_config_text is not None:
      changes = run_config.changes(json.loads(self._saved_config_text),
                         json.loads(self._config_text))
      if changes:
        messages.note(f'step {step} restored under changed settings: {changes}')
    if not self._read_only and self._saved_config_text is None:
      self._write_config()

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
        (self._dir / str(step)).rename(dest)
        messages.warn(f'moved unreadable checkpoint step {step} to {dest}')
    _sync('eiw_jax_checkpoint_move_aside')
    self._manager.reload()

  def _check_config(self) -> Optional[str]:
    """Raises UserError on a structural mismatch; returns the saved text."""
    if not self._config_path.exists():
      return None
    try:
      text = self._config_path.read_text()
    except (OSError, UnicodeDecodeError) as e:
      raise UserError(f'{self._config_path} is unreadable ({messages.one_line(e)}); remove or '
                      f'fix it, or use a new --workdir') from e
    if not _committed_steps(self._dir):
      return text  # Nothing saved to be incompatible with.
    try:
      saved = json.loads(text)
    except json.JSONDecodeError as e:
      raise UserError(f'{self._config_path} is not valid JSON ({e}); '
                      f'{_CONFIG_FIX}') from e
    diff = run_config.structure_difference(saved, json.loads(self._config_text))
    if diff is not None:
      key, old, new = diff
      raise UserError(
          f'{self._workdir} holds checkpoints of a model with {key}={old}, '
          f'but the config has {key}={new}; {_CONFIG_FIX}')
    return text

  def _write_config(self):
    if jax.process_index() == 0:
      self._workdir.mkdir(parents=True, exist_ok=True)
      tmp = self._config_path.with_name('config.json.tmp')
      tmp.write_text(self._config_text)
      tmp.replace(self._config_path)
    self._saved_config_text = self._config_text


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
