"""What a workdir holds of its run besides the checkpoints, kept from being lost.

A run's history is its `metrics.jsonl`, `config.json`, samples and TensorBoard
files. A fresh run saves step 0 (its initial state) before it writes a metrics
record, so a workdir with metrics but no complete checkpoint, or with a config
but no `checkpoints/` folder, has lost its checkpoints (deleted, never copied,
a disk not mounted): `check` refuses to start it over, in one line. With
`train.restart=True` it starts over, and first moves everything of the old run
into `<workdir>/restart-<n>/` (it never applies while a checkpoint is there: a
rerun of the same command then resumes).

`check_data` records the size of both splits in `data.json`, with the SHA-256 of up
to 4096 of their images evenly spread (ImageNet64's 16 GB would take half a minute
to hash whole); a resume on data that changed since says, in one line, that the
batches no longer repeat the uninterrupted run's.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Optional

import numpy as np

from eiw_jax.errors import UserError
from eiw_jax.train import files, messages, workdir as workdir_lib

_KEEP = (workdir_lib.FILENAME,)  # never moved: the lock this run holds
_RESTART = 'restart-'


def _records(path: str) -> Optional[tuple[int, Optional[int]]]:
  """(records, newest step) of a metrics.jsonl, or None when it has none."""
  if not os.path.isfile(path) or os.path.getsize(path) == 0:
    return None
  count, newest = 0, None
  with open(path, 'rb') as f:
    for line in f:
      if not line.strip():
        continue
      count += 1
      try:
        step = json.loads(line).get('step')
      except (ValueError, AttributeError):
        continue
      newest = step if isinstance(step, int) else newest
  return (count, newest) if count else None


def _checkpoints_state(path: str) -> Optional[str]:
  """Why `checkpoints` holds no usable folder, or None when it is a folder."""
  if os.path.isdir(path):
    return None
  if os.path.islink(path):
    return f'checkpoints is a link to {os.readlink(path)}, which is not a folder here'
  if os.path.lexists(path):
    return 'checkpoints is a file, not a folder'
  return 'checkpoints/ is missing'


def check(workdir: str, has_checkpoint: bool, restart: bool, move: bool = True) -> None:
  """Refuses (UserError) to start over in a workdir whose checkpoints are gone; with
  `restart`, moves its old run aside first (only where `move`: process 0)."""
  if has_checkpoint:
    if restart:
      messages.note('train.restart=True has no effect: the workdir holds a checkpoint, '
                    'so the run resumes (to start over, use a new --workdir)')
    return
  ckpt_path = os.path.join(workdir, 'checkpoints')
  state = _checkpoints_state(ckpt_path)
  records = _records(os.path.join(workdir, 'metrics.jsonl'))
  held = []
  if records:
    count, newest = records
    held.append(f'metrics.jsonl with {count} records' +
                (f' up to step {newest}' if newest is not None else ''))
  if (state or records) and os.path.isfile(os.path.join(workdir, 'config.json')):
    held.append('config.json')
  in_the_way = state is not None and os.path.lexists(ckpt_path)
  if not held and not in_the_way:
    return  # a new workdir, or a run killed before it saved step 0
  reason = state or 'checkpoints/ holds no complete checkpoint'
  if restart:
    if move:
      _move_old_run(workdir, reason)
    return
  kept = f'the old run is then kept in {workdir}/{_RESTART}<n>/'
  if not held:
    raise UserError(f'{workdir} cannot hold checkpoints ({reason}); move it away, or pass '
                    f'--config.train.restart=True ({kept})')
  raise UserError(
      f"{workdir} holds a run's history ({', '.join(held)}) but no checkpoint ({reason}); "
      'to resume, put its checkpoints/ back (a backup, the machine it was copied from, a '
      f'disk to mount); to start over from step 0, pass --config.train.restart=True ({kept})')


def _move_old_run(workdir: str, reason: str) -> None:
  n = 1
  while os.path.lexists(os.path.join(workdir, f'{_RESTART}{n}')):
    n += 1
  dest = os.path.join(workdir, f'{_RESTART}{n}')
  fix = 'free disk space or fix the permissions, then rerun'
  with files.guard(f'{dest} (moving the old run aside)', fix):
    os.mkdir(dest)
    for name in sorted(os.listdir(workdir)):
      if name not in _KEEP and not name.startswith(_RESTART):
        shutil.move(os.path.join(workdir, name), os.path.join(dest, name))
  messages.warn(f'train.restart=True: {reason}; starting over from step 0, the old run is '
                f'kept in {dest}')


_SAMPLE = 4096


def fingerprint(split) -> dict:
  """Examples, shape and the SHA-256 of an even sample of a split's images and labels."""
  stride = max(1, len(split.images) // _SAMPLE)
  digest = hashlib.sha256(np.ascontiguousarray(split.images[::stride]).tobytes())
  if split.labels is not None:
    digest.update(np.ascontiguousarray(split.labels[::stride]).tobytes())
  return {'examples': int(len(split.images)), 'shape': list(split.images.shape[1:]),
          'sha256': digest.hexdigest()}


def check_data(workdir: str, splits: dict, start: int) -> None:
  """Warns when a resume at `start` > 0 sees other data than data.json records;
  then records today's (process 0 only)."""
  path = os.path.join(workdir, 'data.json')
  now = {name: fingerprint(split) for name, split in sorted(splits.items())}
  try:
    with open(path) as f:
      before = json.load(f)
  except (OSError, ValueError):
    before = None
  if before == now:
    return
  if start > 0 and isinstance(before, dict):
    changed = [f'{name} {before[name].get("examples")} -> {now[name]["examples"]} examples'
               if before[name].get('examples') != now[name]['examples']
               else f'{name} split content'
               for name in now if isinstance(before.get(name), dict) and before[name] != now[name]]
    if changed:
      messages.warn(f'the data changed since this run trained on it ({", ".join(changed)}): '
                    f'from step {start} on, batches differ from an uninterrupted run\'s; put '
                    'the old data back to resume exactly, or go on with the new')
  files.write_text(path, json.dumps(now, sort_keys=True) + '\n')
