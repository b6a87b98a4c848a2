"""The one way train.py and eval.py write their files: whole or not at all, and a
storage failure told apart from a bug.

Every file is written beside its final name and renamed into place (`write_text`,
`replacing`), so a full disk, a read-only mount or a kill leaves the old file or
none, never half of one. `metrics.jsonl` grows by appending (`append_line`): a
record that does not fit is cut off again, so the file keeps whole records only.
Checkpoints are orbax's (train/checkpoint.py: written in a temporary folder and
renamed the same way).

`storage_problem` finds the storage failure (disk full, quota, read-only, no
permission, a vanished or moved path, a stale network handle) in an exception's
chain; `guard` turns one into a `UserError` of one line. Temporary names start
with '.' and end in `.tmp-<pid>`, so a killed writer's leftovers are recognisable.
"""
from __future__ import annotations

import contextlib
import errno
import os
from typing import Iterator, Optional

from eiw_jax.errors import UserError

# errno values that mean the storage, not the program, failed.
_STORAGE_ERRNOS = frozenset(
    getattr(errno, name) for name in (
        'ENOSPC', 'EDQUOT', 'EROFS', 'EACCES', 'EPERM', 'EIO', 'ENOENT', 'ESTALE',
        'ENOTDIR', 'EISDIR', 'EEXIST', 'ENAMETOOLONG', 'EFBIG', 'ENOTCONN')
    if hasattr(errno, name))
_STORAGE_WORDS = ('No space left on device', 'Disk quota exceeded', 'Read-only file system',
                  'Permission denied', 'No such file or directory', 'Stale file handle',
                  'NOT_FOUND', 'No ArrayMetadata found', 'params are missing')
# What orbax's messages mean where their own words would not say it.
_REMOVED = 'files of a checkpoint were removed while it was being written'
_MEANING = {'No ArrayMetadata found': _REMOVED, 'params are missing': _REMOVED}


def storage_problem(error: Optional[BaseException]) -> Optional[str]:
  """The storage failure in an exception's chain (one line), or None."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _STORAGE_ERRNOS:
      return f'{error.strerror}: {error.filename}' if error.filename else error.strerror
    text = ' '.join(str(error).split())
    for words in _STORAGE_WORDS:
      if words in text:
        return _MEANING.get(words, words if len(text) > 200 else text)
    error = error.__cause__ or error.__context__
  return None


@contextlib.contextmanager
def guard(what: str, fix: str) -> Iterator[None]:
  """Turns a storage failure inside the block into `UserError('could not write
  <what> (<problem>); <fix>')`; other errors pass unchanged."""
  try:
    yield
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    problem = storage_problem(e)
    if problem is None:
      raise
    raise UserError(f'could not write {what} ({problem}); {fix}') from e


def temporary_name(path: str) -> str:
  """A name beside `path` for writing it (the same suffix, for writers that go by it)."""
  folder, name = os.path.split(path)
  stem, suffix = os.path.splitext(name)
  return os.path.join(folder, f'.{stem}.tmp-{os.getpid()}{suffix}')


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
  """Yields a temporary path to write; renamed to `path` once the block ends without
  an error, removed otherwise (the old `path`, if any, is untouched until then)."""
  tmp = temporary_name(path)
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def _write_all(fd: int, data: bytes) -> None:
  view = memoryview(data)
  while view:
    view = view[os.write(fd, view):]


def write_text(path: str, text: str) -> None:
  """Writes `path` whole (synced to the disk), or leaves it as it was."""
  with replacing(path) as tmp:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
      _write_all(fd, text.encode())
      os.fsync(fd)
    finally:
      os.close(fd)


def append_line(path: str, line: str) -> None:
  """Appends `line` and a newline; on a failure cuts the file back to its old end."""
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
  try:
    end = os.fstat(fd).st_size
    try:
      _write_all(fd, (line + '\n').encode())
    except OSError:
      with contextlib.suppress(OSError):
        os.ftruncate(fd, end)
      raise
  finally:
    os.close(fd)
