"""The data layer: image datasets as uint8 arrays and deterministic per-host batches.

Owns the `config.data` keys (`DEFAULTS`), the sources that read each dataset
format (sources.py, folder.py, tfds_source.py), training-set augmentation
(augment.py) and the batching pipeline (pipeline.py). It imports nothing of the
model library or the training runtime.
"""
from eiw_jax.data import augment
from eiw_jax.data.pipeline import NAMES, SOURCES, Split, batches, defaults, load_split
from eiw_jax.errors import UserError


def check(d) -> None:
  """Refuses bad `config.data` values that loading would not catch (UserError)."""
  augment.check(d.augment)
  if not d.batch_size >= 1:
    raise UserError(f'data.batch_size must be >= 1, got {d.batch_size}; '
                    'set --config.data.batch_size')


__all__ = ['NAMES', 'SOURCES', 'Split', 'batches', 'check', 'defaults', 'load_split']
