"""The workdir as a resource: created with a clear error, locked by one training
run at a time, and storage failures told apart from bugs.

One training run per workdir: an exclusive `flock` on `<workdir>/train.lock`.
On a file system without locks (some network mounts answer ENOLCK) the run warns
and goes on unlocked: then nothing keeps a second trainer out.

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
import sys

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
      except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
          print(f'WARNING: {os.path.dirname(self.path)} cannot be locked ({e.strerror}; a '
                'network file system without locks?): training without the lock, so make '
                'sure no other train.py uses this workdir', file=sys.stderr, flush=True)
          break
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
    try:
      os.ftruncate(fd, 0)
      os.write(fd, f'pid {os.getpid()} on host {socket.gethostname()}\n'.encode())
    except OSError as e:  # a full disk: take nothing, leave no empty lock file behind
      os.close(fd)
      _remove(self.path)
      raise UserError(f'cannot write to the workdir {os.path.dirname(self.path)} '
                      f'({e.strerror}: {FILENAME}); free disk space, or use another '
                      '--workdir') from e
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is None:
      return
    _remove(self.path)  # before unlocking, so no one locks a file about to go
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


def _remove(path: str) -> None:
  try:
    os.remove(path)
  except OSError:
    pass


def expand(workdir: str) -> str:
  """`~` expanded: a quoted --workdir='~/runs/x' reaches us unexpanded, and a folder
  named '~' in the current directory is never what was meant."""
  return os.path.expanduser(workdir) if workdir else workdir


def identity(workdir: str) -> tuple:
  """What tells the workdir apart from a folder later put at its path."""
  st = os.stat(workdir)
  return st.st_dev, st.st_ino


def check_in_place(workdir: str, expected: tuple, step: int) -> None:
  """Raises UserError when the workdir was moved, replaced or deleted since
  `identity` gave `expected` (writing on would scatter the run over two folders)."""
  try:
    same = identity(workdir) == expected
  except OSError:
    same = False
  if not same:
    raise UserError(f'the workdir {workdir} was moved, replaced or deleted while training '
                    f'(noticed at step {step}; nothing more was written); rerun the same '
                    'command with --workdir at its new place to resume from its newest '
                    'checkpoint')


def make(workdir: str) -> None:
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f'--workdir={workdir} is a file, not a directory; use another --workdir')
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise UserError(f'cannot create the workdir {workdir} ({e.strerror}); check the path '
                    'and its permissions, or use another --workdir') from e
