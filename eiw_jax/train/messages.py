"""One-line messages of the training runtime on stderr, and what keeps the
libraries' own reports of a handled failure out of them.

A warning or note is printed once (not also through absl's log, which train.py
and eval.py show on stderr too). orbax logs every failure of its background
threads with a traceback, and leaves coroutines behind that report "Event loop is
closed" when the process ends; a failure we handle (a full disk, a checkpoint
that does not fit the config) is told in our one line instead, so
`quiet_orbax_logs` drops orbax's log records, and `quiet_background_failures`
(installed by the scripts, eiw_jax/cli.py) drops what orbax's and asyncio's
leftovers, and background threads failing on the storage, would print.
"""
from __future__ import annotations

import logging as std_logging
import sys
import threading

import jax
from absl import logging


def one_line(error: Exception, limit: int = 240) -> str:
  text = ' '.join(str(error).split())
  text = f'{type(error).__name__}: {text}'
  return text if len(text) <= limit else text[:limit - 3] + '...'


def warn(message: str):
  print(f'WARNING: {message}', file=sys.stderr, flush=True)


def note(message: str):
  if jax.process_index() == 0:
    print(message, file=sys.stderr, flush=True)


def _from_orbax(path: str) -> bool:
  return '/orbax/' in (path or '').replace('\\', '/')


class _DropOrbax(std_logging.Filter):
  """Drops orbax's records: its failures reach the caller as exceptions."""

  def filter(self, record):
    return not _from_orbax(record.pathname)


def quiet_orbax_logs():
  logger = logging.get_absl_logger()
  if not any(isinstance(f, _DropOrbax) for f in logger.filters):
    logger.addFilter(_DropOrbax())


def _leftover(unraisable) -> bool:
  """An orbax coroutine or asyncio object reporting its failure at garbage collection."""
  code = getattr(unraisable.object, 'cr_code', None)
  if code is not None and _from_orbax(code.co_filename):
    return True
  return 'Event loop is closed' in str(unraisable.exc_value)


class _DropStorageFailures(std_logging.Filter):
  """Drops asyncio's reports of futures that failed on the storage and were dropped."""

  def __init__(self, storage_problem):
    super().__init__()
    self._problem = storage_problem

  def filter(self, record):
    error = record.exc_info[1] if record.exc_info else None
    return error is None or self._problem(error) is None


def quiet_background_failures(storage_problem) -> None:
  """Silences orbax's and asyncio's leftovers, and background threads and futures that
  fail on the storage (`storage_problem(error)` is not None): the main thread reports."""
  previous = sys.unraisablehook
  previous_thread = threading.excepthook
  std_logging.getLogger('asyncio').addFilter(_DropStorageFailures(storage_problem))

  def unraisable_hook(unraisable):
    if not _leftover(unraisable):
      previous(unraisable)

  def thread_hook(args):
    if storage_problem(args.exc_value) is None:
      previous_thread(args)

  sys.unraisablehook = unraisable_hook
  threading.excepthook = thread_hook
