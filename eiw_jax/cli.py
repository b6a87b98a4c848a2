"""Shared command-line plumbing for train.py, eval.py and bench.py: parse the
config flag and turn user errors into one line on stderr and exit code 2."""
from __future__ import annotations

import sys
from typing import Callable

from eiw_jax.errors import UserError


def run_main(main: Callable[[list], None]) -> None:
  """absl's app.run, with UserError (and bad flags) as one line + exit 2."""
  import logging  # pylint: disable=g-import-not-at-top
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  logging.getLogger('jax._src.xla_bridge').setLevel(logging.WARNING)

  def guarded(argv):
    try:
      main(argv)
    except UserError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)

  def parse(argv):
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      print(f'error: {_one_line(e)}', file=sys.stderr)
    except (AttributeError, KeyError, ValueError, TypeError, OSError) as e:  # config or override
      print(f'error: {_one_line(e)} (check --config and its --config.* overrides)',
            file=sys.stderr)
    sys.exit(2)

  app.run(guarded, flags_parser=parse)


def _one_line(e: Exception) -> str:
  text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
  return ' '.join(str(text).replace("'", '').split())
