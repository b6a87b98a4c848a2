"""The workdir as a resource: created with a clear error, locked by one training
run at a time, and storage failures told apart from bugs.

One training run per workdir: an exclusive `flock` on `<workdir>/train.lock`.

The kernel releases the lock when its holder exits, however it exits (SIGKILL
included), so a killed run never leaves the workdir locked. The file holds the
holder's pid and host, for the message a second run gets; the holder removes it
when it finishes. Evaluation takes no lock (it only reads).
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
from typing import Optional

from eiw_jax.errors import UserError

FILENAME = 'train.lock'


class Lock:
  """Held from `acquire` until `release` (or the process's end)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, FILENAME)
    self._fd = None

  def acquire(self) -> Lock:
    """Takes the lock or raises UserError naming the process that holds it."""
    while True:
      try:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      except OSError as e:
        raise UserError(f'cannot write to the workdir {os.path.dirname(self.path)} '
                        f'({e.strerror}); check its permissions and free space, or use '
                        'another --workdir') from e
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError:
        holder = _read(fd)
        os.close(fd)
        raise UserError(
            f'{os.path.dirname(self.path)} is in use by another training run ({holder}); '
            'wait for it to finish or stop it, or use another --workdir') from None
      # The holder before us may have removed the file after we opened it: then our
      # lock is on a file nobody else sees, so take the lock on the new one instead.
      try:
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f'pid {os.getpid()} on host {socket.gethostname()}\n'.encode())
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      os.remove(self.path)  # before unlocking, so no one locks a file about to go
    except OSError:
      pass
    os.close(self._fd)
    self._fd = None

  def __enter__(self) -> Lock:
    return self.acquire()

  def __exit__(self, *unused):
    self.release()


def _read(fd: int) -> str:
  try:
    text = os.pread(fd, 200, 0).decode(errors='replace').strip()
  except OSError:
    text = ''
  return text or 'pid unknown'


def make(workdir: str) -> None:
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f'--workdir={workdir} is a file, not a directory; use another --workdir')
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise UserError(f'cannot create the workdir {workdir} ({e.strerror}); check the path '
                    'and its permissions, or use another --workdir') from e


# errno values that mean the storage, not the program, failed.
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO,
                   errno.ENOENT)
_STORAGE_WORDS = ('No space left on device', 'Disk quota exceeded', 'Read-only file system',
                  'Permission denied', 'No such file or directory', 'NOT_FOUND',
                  'No ArrayMetadata found', 'params are missing')
# What orbax's messages mean where their own words would not say it.
_REMOVED = 'files of a checkpoint were removed while it was being written'
_MEANING = {'No ArrayMetadata found': _REMOVED, 'params are missing': _REMOVED}


def storage_problem(error: BaseException) -> Optional[str]:
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
