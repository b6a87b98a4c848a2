"""Source 'tfds': tensorflow-datasets data prepared on disk (downloaded only with
data.download=True; offline it fails fast, before tfds is imported)."""
from __future__ import annotations

import os
import pathlib

import numpy as np

from eiw_jax.data.folder import square_resize
from eiw_jax.errors import UserError

TFDS_NAMES = {'mnist': 'mnist', 'fashion_mnist': 'fashion_mnist',
              'cifar10': 'cifar10', 'celeba': 'celeb_a',
              'imagenet32': 'downsampled_imagenet/32x32',
              'imagenet64': 'downsampled_imagenet/64x64'}


def expand(d):
  return os.path.abspath(os.path.expanduser(d)) if d else ''


def tfds_default_dir():
  return expand(os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets')


def tfds_prepared(name, data_dir):
  """True if tfds data for `name` is prepared under data_dir (no tfds import)."""
  root = pathlib.Path(data_dir, TFDS_NAMES[name])
  return root.is_dir() and (any(root.glob('*/dataset_info.json'))
                            or any(root.glob('*/*/dataset_info.json')))


def load_tfds(dcfg, split, d):
  """Reads tfds data prepared in d (or dcfg.dir, or the default data dir)."""
  name = dcfg.name
  if name not in TFDS_NAMES:
    raise UserError(f'{name}: not available from tfds; set --config.data.source')
  data_dir = d or expand(dcfg.dir) or tfds_default_dir()
  if not tfds_prepared(name, data_dir) and not dcfg.download:
    raise UserError(f'{name}: no prepared tfds data in {data_dir}; add '
                    '--config.data.download=True (needs network) or pass '
                    '--config.data.dir=DIR with local files')
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserError(f'{name}: cannot import tensorflow_datasets ({e}); install '
                    'it with its dependencies (importlib_resources)') from e
  try:
    builder = tfds.builder(TFDS_NAMES[name], data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise UserError(f'{name}: cannot open the tfds data in {data_dir} '
                    f'({reason}); re-prepare it or use local files') from e
  if not builder.is_prepared():
    if not dcfg.download:
      raise UserError(f'{name}: the tfds data in {data_dir} is not version '
                      f'{builder.version}; add --config.data.download=True')
    builder.download_and_prepare(file_format='array_record')
  try:
    src = builder.as_data_source(split=split)
    examples = [src[i] for i in range(len(src))]
    raw = [np.asarray(ex['image']) for ex in examples]
    labels = (np.array([ex['label'] for ex in examples])
              if examples and 'label' in examples[0] else None)
  except (NotImplementedError, ImportError):  # TFRecord, or decoding needs tf
    try:
      ds = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    except ImportError as e:
      raise UserError(f'{name}: reading the tfds data in {data_dir} needs '
                      'tensorflow here; install tensorflow or use local files '
                      '(--config.data.dir)') from e
    raw, labels = list(ds['image']), ds.get('label')
  if raw and raw[0].shape[:2] != (dcfg.image_size,) * 2:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    mode = 'L' if dcfg.channels == 1 else 'RGB'
    raw = [np.asarray(square_resize(Image.fromarray(np.squeeze(x)).convert(
        mode), dcfg.image_size)).reshape(dcfg.image_size, dcfg.image_size, -1)
           for x in raw]
  return np.stack(raw), labels


