"""The one exception type that command-line entry points turn into a clean exit.

A `UserError` message is one line that names the problem and the fix, in the
terms of the library: a config key is named by its path (`config.model.hidden`),
which is also what a command-line user writes after `--`; `as_flags` turns a
message into train.py's wording. `train.py` and `eval.py` print it and exit with
code 2; anything else is a bug and keeps its traceback.
"""
import difflib
import re

_CONFIG_PATH = re.compile(r'(?<![\w.-])config\.(?=(?:model|data|optim|train|eval)\.\w)')
_LIST_VALUE = re.compile(r'(--config\.[\w.]+=)(\[\[.*?\]\])')  # quoted for the shell


class UserError(Exception):
  """Bad input from the user (data, config, workdir): one line, problem and fix."""


def as_flags(message: str) -> str:
  """A message as a command-line user reads it: every config key path
  (`config.model.hidden`) becomes the flag that sets it (`--config.model.hidden`)."""
  return _LIST_VALUE.sub(r'\1"\2"', _CONFIG_PATH.sub('--config.', message))


def positive_int(value) -> bool:
  """True for an int >= 1 (not a bool): the test every count and width in a config passes."""
  return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def refuse_unknown(keys, known, what: str, prefix: str = '') -> None:
  """UserError for the first of `keys` not in `known`, naming the nearest known key."""
  unknown = sorted(set(keys) - set(known))
  if unknown:
    near = difflib.get_close_matches(unknown[0], sorted(known), n=1)
    hint = f'did you mean {prefix}{near[0]}?' if near else f'the keys are: {", ".join(sorted(known))}'
    raise UserError(f'unknown {what} {prefix + unknown[0]!r}; {hint}')
