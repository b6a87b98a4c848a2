"""Shared command-line plumbing for train.py, eval.py and bench.py: one LAPACK thread
(cpu_lapack), parse the config flag, turn user errors into one line on stderr and
exit code 2, and keep compiled programs across runs (JAX's persistent compilation
cache).

A config file that does not run (a syntax error, a name it lacks) is one line
naming its file and line. A list key takes a new value as `--config.eval.temperatures=0.5,0.7`
(or `'[0.5, 0.7]'`). Ctrl-C is one line: the training loop saves first
(train/multihost.py), and the process ends as interrupted (status 130 in a shell).

--compilation_cache (every script): the directory of JAX's persistent compilation
cache, on by default, so that a restart, a resume after preemption or an eval of
the same model skips compiling what an earlier run compiled, and a restart reads
the traced training step from its `steps/` folder (eiw_jax.train.stored_step). '' turns
both off. The default is $EIW_JAX_COMPILATION_CACHE if set, else ~/.cache/eiw_jax/xla.
"""
from __future__ import annotations

import ast
import difflib
import os
import re
import sys
import traceback
from typing import Callable

from absl import flags
from ml_collections import config_flags

from eiw_jax import cpu_lapack

# The scripts' start-up sets one OpenBLAS thread for jaxlib's CPU LAPACK (see
# cpu_lapack): a process-wide choice, so it is made here and not by `import eiw_jax`.
# A program of its own that calls the library sets OPENBLAS_NUM_THREADS=1 itself.
cpu_lapack.load_single_threaded()

_CACHE = flags.DEFINE_string(
    'compilation_cache', os.environ.get('EIW_JAX_COMPILATION_CACHE', '~/.cache/eiw_jax/xla'),
    "JAX's persistent compilation cache directory ('' turns it off).")


class _ListParser(flags.ArgumentParser):
  """A list key's new value: '0.5,0.7', '[0.5, 0.7]' or '(0.5, 0.7)'; one value is a
  list of one. Each item is a Python literal, else a string."""

  def parse(self, argument):
    if isinstance(argument, (list, tuple)):
      return list(argument)
    text = str(argument).strip()
    try:
      value = ast.literal_eval(text)
    except (SyntaxError, ValueError):
      value = [_literal(part) for part in text.strip('[]()').split(',') if part.strip()]
    return list(value) if isinstance(value, (list, tuple)) else [value]

  def flag_type(self):
    return 'list'


def _literal(text: str):
  try:
    return ast.literal_eval(text.strip())
  except (SyntaxError, ValueError):
    return text.strip()


config_flags.register_flag_parser_for_type(list, _ListParser())


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
  except SyntaxError as e:  # the config file does not parse
    print(f'error: {e.filename}, line {e.lineno}: {e.msg} (SyntaxError); fix the config file',
          file=sys.stderr)
  except Exception as e:  # pylint: disable=broad-except  # raised by the config file's code
    print(f'error: {_config_file_error(e)}', file=sys.stderr)
  sys.exit(2)


def _config_file_error(error: Exception) -> str:
  """One line for an error raised while a config file ran: where, what, the fix."""
  if type(error).__name__ == 'UserError':
    return ' '.join(str(error).split())
  frames = [f for f in traceback.extract_tb(error.__traceback__)
            if 'site-packages' not in f.filename and not f.filename.startswith(sys.prefix)
            and os.path.basename(f.filename) != 'cli.py']
  where = f'{frames[-1].filename}, line {frames[-1].lineno}: ' if frames else ''
  return (f'{where}{type(error).__name__}: {" ".join(str(error).split())}; fix the config file '
          'or its --config.* overrides')


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
  """absl's app.run, with UserError (and bad flags) as one line + exit 2, and Ctrl-C
  as one line and the exit of an interrupted process."""
  import logging  # pylint: disable=g-import-not-at-top
  from absl import app  # pylint: disable=g-import-not-at-top
  from eiw_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  logging.getLogger('jax._src.xla_bridge').setLevel(logging.WARNING)

  def guarded(argv):
    try:
      # pylint: disable=g-import-not-at-top
      from eiw_jax.train import files, messages
      messages.quiet_orbax_logs()
      messages.quiet_background_failures(files.storage_problem)
      enable_compilation_cache(_CACHE.value)
      main(argv)
    except UserError as e:
      print(f'error: {" ".join(str(e).split())}', file=sys.stderr)  # always one line
      sys.exit(2)
    except KeyboardInterrupt as e:
      from eiw_jax.train import multihost  # pylint: disable=g-import-not-at-top
      print(f'\n{str(e) or _INTERRUPTED}', file=sys.stderr)
      multihost.die_by_sigint()

  app.run(guarded, flags_parser=parse_flags)


_INTERRUPTED = ('interrupted (Ctrl-C) outside the training steps: nothing was saved now; '
                'what was written before is whole: rerun the same command to go on')


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
  if config is None and not unknown_only:
    return (f'--{name} overrides a key of --config, which is not given; pass the config too: '
            '--config=configs/<dataset>.py, or --config=configs/saved.py:<workdir> for the '
            "config a run saved")
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
