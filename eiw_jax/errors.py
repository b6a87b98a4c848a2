"""The one exception type that command-line entry points turn into a clean exit.

A `UserError` message is one line that names the problem and the fix. `train.py`
and `eval.py` print it and exit with code 2; anything else is a bug and keeps its
traceback.
"""


class UserError(Exception):
  """Bad input from the user (data, config, workdir): one line, problem and fix."""


def positive_int(value) -> bool:
  """True for an int >= 1 (not a bool): the test every count and width in a config passes."""
  return isinstance(value, int) and not isinstance(value, bool) and value >= 1
