"""One-line messages of the training runtime on stderr (process 0), and a filter
that keeps orbax's per-save INFO logs out of them."""
from __future__ import annotations

import logging as std_logging
import sys

import jax
from absl import logging


def one_line(error: Exception, limit: int = 240) -> str:
  text = ' '.join(str(error).split())
  text = f'{type(error).__name__}: {text}'
  return text if len(text) <= limit else text[:limit - 3] + '...'


def warn(message: str):
  logging.warning('%s', message)
  print(f'WARNING: {message}', file=sys.stderr, flush=True)


def note(message: str):
  logging.info('%s', message)
  if jax.process_index() == 0:
    print(message, file=sys.stderr, flush=True)


class _DropOrbaxInfo(std_logging.Filter):
  """Keeps orbax's warnings and errors, drops its per-save INFO chatter."""

  def filter(self, record):
    return (record.levelno >= std_logging.WARNING or
            '/orbax/' not in record.pathname.replace('\\', '/'))


def quiet_orbax_logs():
  logger = logging.get_absl_logger()
  if not any(isinstance(f, _DropOrbaxInfo) for f in logger.filters):
    logger.addFilter(_DropOrbaxInfo())
