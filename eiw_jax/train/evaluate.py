"""eval.py's work: evaluate a saved run in one mode and write what it measured.

The run is opened read-only (runs.load_for_eval). The results go to `output_dir`
when given, else to `<workdir>/eval/`; when that cannot be written (a read-only
mount, another user's run), to `<temp dir>/eiw_jax_eval/<the workdir's path, '/'
as '_'>/`, said in one line. A mode writes into a hidden staging folder in the
output folder; once it has finished, its files are renamed into place and
`<mode>.json` is written last (train/files.py), so a full disk or Ctrl-C leaves no
partial PNG or JSON, and a storage failure is one line.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from typing import Optional

import jax

from eiw_jax import data, evaluation
from eiw_jax.builder import build
from eiw_jax.errors import UserError
from eiw_jax.train import files, messages, runs, settings
from eiw_jax.train import workdir as workdir_lib

_UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
_FIX = 'free disk space, or pass --output_dir=<a folder you can write>'


def fallback_dir(workdir: str) -> str:
  """Where the results of a run in an unwritable workdir go."""
  name = os.path.abspath(workdir).strip(os.sep).replace(os.sep, '_') or 'root'
  return os.path.join(tempfile.gettempdir(), 'eiw_jax_eval', name)


def _staging(out_dir: str, mode: str) -> str:
  os.makedirs(out_dir, exist_ok=True)
  stage = os.path.join(out_dir, f'.{mode}.tmp-{os.getpid()}')
  shutil.rmtree(stage, ignore_errors=True)
  os.mkdir(stage)
  return stage


def _open_output(workdir: Optional[str], output_dir: Optional[str], mode: str):
  """(output folder, staging folder), or (None, None) when nothing is to be written."""
  if output_dir:
    out = workdir_lib.expand(output_dir)
    with files.guard(f'--output_dir={out}', _FIX):
      return out, _staging(out, mode)
  if not workdir:
    return None, None
  out = os.path.join(workdir, 'eval')
  with files.guard(out, _FIX):
    try:
      return out, _staging(out, mode)
    except OSError as e:
      if e.errno not in _UNWRITABLE:
        raise
      why = e.strerror
  other = fallback_dir(workdir)
  with files.guard(other, _FIX):
    stage = _staging(other, mode)
  messages.warn(f'cannot write to {out} ({why}); writing the results to {other} instead '
                '(choose the folder with --output_dir)')
  return other, stage


def _publish(stage: str, out_dir: str, mode: str, text: str) -> None:
  """Renames the mode's files into place, then writes <mode>.json."""
  for name in sorted(os.listdir(stage)):
    os.replace(os.path.join(stage, name), os.path.join(out_dir, name))
  files.write_text(os.path.join(out_dir, f'{mode}.json'), text)


def result_text(result: dict) -> str:
  """What `<mode>.json` holds (and eval.py prints)."""
  return json.dumps(result, indent=2, sort_keys=True) + '\n'


def run_mode(config, workdir: Optional[str], mode: str, *, seed: int = 0,
             output_dir: Optional[str] = None) -> dict:
  """Evaluates the newest readable checkpoint of `workdir` (no checkpoint for
  'summary') under `config` (default: the run's own), writes the results (the module
  docstring says where) and returns them."""
  if mode not in evaluation.MODES:
    raise UserError(f'unknown --mode={mode}; choose one of {", ".join(evaluation.MODES)}')
  settings.check_seed(seed, '--seed')
  workdir = workdir_lib.expand(workdir)
  config = config or runs.saved_config(workdir)
  if mode == 'summary':
    model, variables = build(config), None
  else:
    if not workdir:
      raise UserError(f'--mode={mode} needs --workdir=<a training run>')
    model, variables, step = runs.load_for_eval(config, workdir)
    print(f'evaluating step {step} of {workdir}', flush=True)
  splits = {}

  def load_split(name):
    if name not in splits:
      splits[name] = data.load_split(config.data, name)
    return splits[name]

  out_dir, stage = _open_output(workdir, output_dir, mode)
  try:
    ctx = evaluation.EvalContext(model=model, variables=variables, config=config,
                                 out_dir=stage, rng=jax.random.key(seed), load_split=load_split)
    with files.guard(out_dir or 'the results', _FIX):
      result = evaluation.get_mode(mode)(ctx)
      if out_dir:
        _publish(stage, out_dir, mode, result_text(result))
  finally:
    if stage:
      with contextlib.suppress(OSError):
        shutil.rmtree(stage)
  return result
