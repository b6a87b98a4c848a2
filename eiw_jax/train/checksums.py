"""Checksums of a checkpoint's files, written once the checkpoint is committed and
verified before it is restored.

`<step>/checksums.json` maps every file under the step's directory (relative
path) to its size and SHA-256. A step without that file (written before the file
existed, or by a process killed between the commit and the checksums) is
restored unverified.
"""
from __future__ import annotations

import hashlib
import json
import os

from eiw_jax.train import files

FILENAME = 'checksums.json'
_CHUNK = 1 << 20
_TEMPORARY = '.' + os.path.splitext(FILENAME)[0] + '.tmp-'  # files.temporary_name


def _digest(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(_CHUNK), b''):
      h.update(block)
  return h.hexdigest()


def _files(step_dir: str) -> list[str]:
  out = []
  for dirpath, _, filenames in os.walk(step_dir):
    for name in filenames:
      rel = os.path.relpath(os.path.join(dirpath, name), step_dir)
      if not rel.startswith((FILENAME, _TEMPORARY)):  # ours, or ours being written
        out.append(rel)
  return sorted(out)


def write(step_dir: str) -> None:
  """Records the size and SHA-256 of every file of a committed step (atomically)."""
  table = {rel: [os.path.getsize(os.path.join(step_dir, rel)),
                 _digest(os.path.join(step_dir, rel))] for rel in _files(step_dir)}
  files.write_text(os.path.join(step_dir, FILENAME), json.dumps(table, indent=0, sort_keys=True))


def has(step_dir: str) -> bool:
  return os.path.exists(os.path.join(step_dir, FILENAME))


def verify(step_dir: str) -> bool:
  """Whether the step's files match its checksums; True when it has none.

  Raises:
    ValueError: naming the first file that is missing, of another size, or
      whose content differs (or a checksum file that cannot be read).
  """
  path = os.path.join(step_dir, FILENAME)
  if not os.path.exists(path):
    return False
  try:
    with open(path) as f:
      table = json.load(f)
    if not isinstance(table, dict):
      raise ValueError('not a table')
  except (OSError, ValueError) as e:
    raise ValueError(f'{FILENAME} is unreadable ({e})') from e
  for rel, (size, digest) in sorted(table.items()):
    full = os.path.join(step_dir, rel)
    if not os.path.isfile(full):
      raise ValueError(f'checksum mismatch: {rel} is missing')
    if os.path.getsize(full) != size:
      raise ValueError(f'checksum mismatch: {rel} has {os.path.getsize(full)} bytes, '
                       f'{size} were written')
    if _digest(full) != digest:
      raise ValueError(f'checksum mismatch: the content of {rel} changed since it was written')
  return True
