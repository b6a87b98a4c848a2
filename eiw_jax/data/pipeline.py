"""Datasets as uint8 numpy arrays, and deterministic per-host batches.

`load_split(dcfg, split)` reads one split (`dcfg` is `config.data`) from a local
source or tfds and returns a `Split` of uint8 NHWC images reduced to `num_bits`.
`batches(split, ...)` yields this host's rows of each global batch; global batch
s depends only on (seed, s), so training resumes bit-exactly with start_step=s
and the batch is the same whatever the number of hosts.

Sources (`dcfg.source`, readers in `eiw_jax.data.sources`): 'idx' (MNIST-format
files), 'npz' (downsampled-ImageNet batches, or train.npz/test.npz holding
`images` NHWC and optional `labels`), 'pickle' (CIFAR-10's python batches in
cifar-10-batches-py/), 'folder' (image files), 'tfds' (prepared data only unless
dcfg.download), 'synthetic', and 'auto': dcfg.dir when given, then Debian's
Fashion-MNIST, then prepared tfds data. Missing data fails fast with a
`UserError` and writes nothing.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import queue
import threading
from typing import Iterator, Optional

import numpy as np

from eiw_jax.data import augment as augmentation
from eiw_jax.data.folder import IMAGE_EXTS
from eiw_jax.data.sources import CIFAR_SUBDIR, LOADERS, check_shape, cifar_dir, idx_files
from eiw_jax.data.tfds_source import TFDS_NAMES, expand, tfds_default_dir, tfds_prepared
from eiw_jax.errors import UserError

NAMES = ('mnist', 'fashion_mnist', 'cifar10', 'celeba', 'imagenet32',
         'imagenet64', 'synthetic')
SOURCES = ('auto', 'tfds', 'idx', 'npz', 'pickle', 'folder', 'synthetic')
DEBIAN_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'


def defaults(name: str, image_size: int, channels: int, batch_size: int) -> dict:
  """The `config.data` keys for dataset `name`."""
  return dict(name=name, source='auto', dir='', download=False, image_size=image_size,
              channels=channels, num_bits=8, batch_size=batch_size, num_synthetic=512,
              augment='none')  # training-set augmentation (augment.py)


def _complete(dcfg):
  """`dcfg` with every data key: a group written by hand may leave out the ones
  whose defaults it wants."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  full = ml_collections.ConfigDict(defaults(dcfg.name, dcfg.image_size, dcfg.channels,
                                            dcfg.get('batch_size', 1)))
  full.update(dcfg)
  return full


@dataclasses.dataclass
class Split:
  images: np.ndarray  # uint8 [N, H, W, C], values in [0, 2**num_bits)
  labels: Optional[np.ndarray]  # int32 [N], or None


def load_split(dcfg, split: str) -> Split:
  """Loads split 'train' or 'test' of `dcfg.name`, validated and bit-reduced."""
  if split not in ('train', 'test'):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  dcfg = _complete(dcfg)
  name, source = dcfg.name, dcfg.source
  if name not in NAMES:
    raise UserError(f'unknown dataset {name!r}; set --config.data.name to one '
                    f'of {", ".join(NAMES)}')
  if source not in SOURCES:
    raise UserError(f'unknown data source {source!r}; set '
                    f'--config.data.source to one of {", ".join(SOURCES)}')
  if not 1 <= dcfg.num_bits <= 8:
    raise UserError(f'num_bits={dcfg.num_bits} is out of range; set '
                    '--config.data.num_bits to 1..8')
  if source == 'auto':
    source, where = _resolve_auto(dcfg)
  else:
    where = expand(dcfg.dir) if source != 'tfds' else ''
    if source in ('idx', 'npz', 'pickle', 'folder') and not where:
      raise UserError(f'{name}: source {source!r} needs a directory; pass '
                      '--config.data.dir=DIR')
  images, labels = LOADERS[source](dcfg, split, where)
  origin = f'{name} ({source} {where})' if where else f'{name} ({source})'
  images = _validate(dcfg, images, origin)
  if labels is not None:
    labels = np.asarray(labels).astype(np.int32).reshape(-1)
    if len(labels) != len(images):
      raise UserError(f'{name}: {len(images)} images but {len(labels)} labels in '
                      f'{where or source}; fix the data files')
  if dcfg.num_bits < 8:
    if not images.flags.writeable or not images.flags.owndata:
      images = images.copy()
    np.right_shift(images, 8 - dcfg.num_bits, out=images)
  return Split(images, labels)


def batches(split: Split, batch_size: int, *, seed: int, start_step: int = 0,
            process_index: int = 0, process_count: int = 1,
            shuffle: bool = True, repeat: bool = True,
            prefetch: int = 2, augment: str = 'none') -> Iterator[np.ndarray]:
  """Yields this host's rows of each global batch, uint8 [B // P, H, W, C].

  Global batch s of epoch e = s // steps_per_epoch takes rows of a permutation
  drawn from (seed, e); host p gets its rows [p * B/P, (p + 1) * B/P).
  repeat=True loops forever and drops each epoch's incomplete last batch.
  repeat=False walks the split once; its last batch is returned short, not
  padded, so with several hosts a host's final slice may be short or empty
  (every host still yields the same number of batches). `prefetch` batches are
  prepared by a daemon thread that stops when the iterator is closed or dropped.
  `augment` (config.data.augment, `eiw_jax.data.augment`) transforms each row as a
  function of (seed, global batch index, row in the global batch).
  """
  n = len(split.images)
  if batch_size <= 0 or batch_size % process_count:
    raise UserError(f'batch_size={batch_size} must be positive and divisible by '
                    f'the {process_count} processes; set --config.data.batch_size')
  if not 0 <= process_index < process_count or start_step < 0:
    raise ValueError(f'bad process_index={process_index}, process_count='
                     f'{process_count} or start_step={start_step}')
  if repeat and n < batch_size:
    raise UserError(f'batch_size={batch_size} exceeds the {n} examples of the '
                    'split; lower --config.data.batch_size')
  augmentation.check(augment)
  per_host = batch_size // process_count
  lo, hi = process_index * per_host, (process_index + 1) * per_host

  def produce():
    indices = _global_indices(n, batch_size, seed, start_step, shuffle, repeat)
    for step, idx in enumerate(indices, start_step):
      rows = np.take(split.images, idx[lo:hi], axis=0)
      yield augmentation.augment(rows, augment, seed=seed, step=step, rows=slice(lo, hi),
                                 global_batch_size=batch_size)

  return _prefetched(produce, prefetch) if prefetch > 0 else produce()


def _order(n, seed, epoch, shuffle):
  if not shuffle:
    return np.arange(n)
  return np.random.default_rng([seed % 2**63, epoch]).permutation(n)


def _global_indices(n, batch_size, seed, start_step, shuffle, repeat):
  """Index arrays of the global batches start_step, start_step + 1, ..."""
  if not repeat:
    order = _order(n, seed, 0, shuffle)
    for start in range(start_step * batch_size, n, batch_size):
      yield order[start:start + batch_size]
    return
  per_epoch = n // batch_size
  epoch, order, step = -1, None, start_step
  while True:
    e, i = divmod(step, per_epoch)
    if e != epoch:
      epoch, order = e, _order(n, seed, e, shuffle)
    yield order[i * batch_size:(i + 1) * batch_size]
    step += 1


_END, _RAISED = object(), object()


def _prefetched(make_iter, size):
  """Runs make_iter() in a daemon thread, `size` items ahead of the consumer."""
  q, stop = queue.Queue(maxsize=size), threading.Event()

  def put(item):
    while not stop.is_set():
      try:
        q.put(item, timeout=0.05)
        return True
      except queue.Full:
        pass
    return False

  def work():
    try:
      for item in make_iter():
        if not put(item):
          return
      put(_END)
    except BaseException as e:  # pylint: disable=broad-except
      put((_RAISED, e))

  thread = threading.Thread(target=work, name='eiw-data-prefetch', daemon=True)
  thread.start()
  try:
    while True:
      item = q.get()
      if item is _END:
        return
      if isinstance(item, tuple) and item[0] is _RAISED:
        raise item[1]
      yield item
  finally:
    stop.set()
    thread.join(timeout=5)


# ---------------------------------------------------------------- resolution


def _first(paths):
  return next(iter(paths), None) is not None


def _detect(dcfg, d):
  """The kind of data in directory d, or None."""
  if idx_files(d):
    return 'idx'
  if cifar_dir(d) is not None:
    return 'pickle'
  if dcfg.name in TFDS_NAMES and tfds_prepared(dcfg.name, d):
    return 'tfds'
  root = pathlib.Path(d)
  if _first(root.rglob('*.npz')):
    return 'npz'
  if _first(p for p in root.rglob('*') if p.suffix.lower() in IMAGE_EXTS):
    return 'folder'
  return None


def _resolve_auto(dcfg):
  """(source, directory) for source='auto'; never writes to disk."""
  name, d = dcfg.name, expand(dcfg.dir)
  if name == 'synthetic':
    return 'synthetic', ''
  if d:
    if not os.path.isdir(d):
      raise UserError(f'{name}: --config.data.dir={d} does not exist; pass an '
                      'existing directory or --config.data.dir= for the default')
    kind = _detect(dcfg, d)
    if kind is None:
      raise UserError(f'{name}: no IDX, CIFAR-10 pickle, npz, image or '
                      f'prepared tfds files in {d}; point --config.data.dir at '
                      'the data')
    return kind, d
  if name == 'fashion_mnist' and len(idx_files(DEBIAN_FASHION_MNIST_DIR)) == 4:
    return 'idx', DEBIAN_FASHION_MNIST_DIR
  if tfds_prepared(name, tfds_default_dir()) or dcfg.download:
    return 'tfds', ''
  raise UserError(_missing_message(name))


_HINTS = {
    'fashion_mnist': ('install it with `apt-get install dataset-fashion-mnist` '
                      'or pass --config.data.dir=DIR with IDX files'),
    'mnist': ('pass --config.data.dir=DIR with the MNIST IDX files or add '
              '--config.data.download=True'),
    'cifar10': ('download cifar-10-python.tar.gz, extract it and pass '
                f'--config.data.dir=DIR (the folder holding {CIFAR_SUBDIR}), '
                'or add --config.data.download=True'),
    'celeba': ('pass --config.data.dir=DIR with the CelebA images (e.g. '
               'img_align_celeba/)'),
}


def _missing_message(name):
  looked = f'the tfds data dir {tfds_default_dir()}'
  if name == 'fashion_mnist':
    looked = f'{DEBIAN_FASHION_MNIST_DIR} and {looked}'
  hint = _HINTS.get(name, 'pass --config.data.dir=DIR with the downsampled-'
                    'ImageNet npz batches (train_data_batch_1.npz ... '
                    'val_data.npz)')
  return f'{name}: no data found (looked in {looked}); {hint}'


def _validate(dcfg, images, where):
  images = np.asarray(images)
  if images.dtype != np.uint8:
    lo_hi = (f' with values in [{images.min()}, {images.max()}]'
             if images.size and np.issubdtype(images.dtype, np.number) else '')
    raise UserError(f'{where}: images are {images.dtype}{lo_hi}, expected uint8 '
                    'in [0, 255]; convert the data to uint8')
  if images.ndim != 4 or len(images) == 0:
    raise UserError(f'{where}: expected images [N>0, H, W, C], got shape '
                    f'{images.shape}; check the data files')
  check_shape(dcfg, images.shape[1:], where)
  return images
