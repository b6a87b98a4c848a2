"""Shared command-line plumbing for train.py, eval.py and bench.py: one LAPACK thread
(cpu_lapack), parse the config flag, turn user errors into one line on stderr and
exit code 2, and keep compiled programs across runs (JAX's persistent compilation
cache).

--compilation_cache (every script): the directory of JAX's persistent compilation
cache, on by default, so that a restart, a resume after preemption or an eval of
the same model skips compiling what an earlier run compiled, and a restart reads
the traced training step from its `steps/` folder (eiw_jax.train.stored_step). '' turns
both off. The default is $EIW_JAX_COMPILATION_CACHE if set, else ~/.cache/eiw_jax/xla.
"""
from __future__ import annotations

import difflib
import os
import re
import sys
from typing import Callable

from absl import flags

from eiw_jax import cpu_lapack

# The scripts' start-up sets one OpenBLAS thread for jaxlib's CPU LAPACK (see
# cpu_lapack): a process-wide choice, so it is made here and not by `import eiw_jax`.
# A program of its own that calls the library sets OPENBLAS_NUM_THREADS=1 itself.
cpu_lapack.load_single_threaded()

_CACHE = flags.DEFINE_string(
    'compilation_cache', os.environ.get('EIW_JAX_COMPILATION_CACHE', '~/.cache/eiw_jax/xla'),
    "JAX's persistent compilation cache directory ('' turns it off).")


def enable_compilation_cache(path: str) -> None:
  """Keeps every compiled program that took over a second in `path` ('' : off)."""
  if not path:
    return
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_compilation_cache_dir', os.path.expanduser(path))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def parse_flags(argv: list, flag_values=None) -> list:
  """Parses argv; a bad flag, config file or override is one line on stderr and exit 2."""
  flag_values = flags.FLAGS if flag_values is None else flag_values
  try:
    argv = flag_values(argv)
    for name in flag_values:  # a config file that failed to load raises only when read
      value = flag_values[name].value
      if type(value).__name__ == '_ErrorConfig':
        value.keys()
    return argv
  except flags.UnrecognizedFlagError as e:
    message = _config_override_error(e.flagname, e.flagvalue, flag_values)
    print(f'error: {message or _one_line(e)}', file=sys.stderr)
  except flags.Error as e:
    print(f'error: {_unknown_override(argv, flag_values) or _one_line(e)}', file=sys.stderr)
  except (AttributeError, KeyError, ValueError, TypeError, OSError) as e:  # config or override
    message = _unknown_override(argv, flag_values)
    message = message or f'{_one_line(e)} (check --config and its --config.* overrides)'
    print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _unknown_override(argv: list, flag_values):
  """The message for the first --config.<key> override naming no key of the config."""
  for arg in argv[1:]:
    if not arg.startswith('--config.'):
      continue
    name, _, value = arg[2:].partition('=')
    message = _config_override_error(name, value, flag_values, unknown_only=True)
    if message:
      return message
  return None


def run_main(main: Callable[[list], None]) -> None:
  """absl's app.run, with UserError (and bad flags) as one line + exit 2."""
  import logging  # pylint: disable=g-import-not-at-top
  from absl import app  # pylint: disable=g-import-not-at-top
  from eiw_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  logging.getLogger('jax._src.xla_bridge').setLevel(logging.WARNING)

  def guarded(argv):
    try:
      enable_compilation_cache(_CACHE.value)
      main(argv)
    except UserError as e:
      print(f'error: {" ".join(str(e).split())}', file=sys.stderr)  # always one line
      sys.exit(2)

  app.run(guarded, flags_parser=parse_flags)


def _config_override_error(name, flagvalue, flag_values, unknown_only=False):
  """absl calls a bad --config.<key> override unknown; say which of the two it is."""
  name = name or ''
  if not name.startswith('config.') or 'config' not in flag_values:
    return None
  try:
    config = flag_values['config'].value
  except Exception:  # pylint: disable=broad-except
    config = None
  if config is None and unknown_only:  # the override failed before the file was read
    from eiw_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top
    config = config_lib.base_config(name='', image_size=1, channels=1, batch_size=1,
                                    train_steps=1)
  path = name[len('config.'):]
  if config is None or not hasattr(config, 'keys'):
    return None
  value = config
  for key in path.split('.'):
    if not hasattr(value, 'keys') or key not in value.keys():
      from eiw_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top
      keys = sorted(config_lib.leaf_keys(config))
      near = difflib.get_close_matches(path, keys, n=1)
      if not near:  # a group left out (--config.lr): match the last part alone
        last = {k.rsplit('.', 1)[-1]: k for k in reversed(keys)}
        near = [last[k] for k in difflib.get_close_matches(path.rsplit('.', 1)[-1], last, n=1)]
      hint = f'did you mean --config.{near[0]}?' if near else 'check the key against --config'
      return f'unknown config key {path}; {hint}'
    value = value[key]
  if unknown_only:
    return None
  given = (flagvalue or '').split('=', 1)[-1]
  return (f'--{name}={given} is not a valid {type(value).__name__} (the config has {value!r}); '
          f'fix the value of --{name}')


def _one_line(e: Exception) -> str:
  text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
  if 'Traceback (most recent call last)' in text:  # an error inside the config file
    text = re.sub(r'^\w+: ', '', text.strip().splitlines()[-1])
  elif isinstance(e, OSError) and e.__cause__ is not None:  # an unreadable config file
    text = re.sub(r'^\[Errno \d+\] ', '', str(e.__cause__).strip().splitlines()[-1].strip())
  return ' '.join(str(text).replace("'", '').split())
