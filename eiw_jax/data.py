"""Datasets as uint8 numpy arrays, and deterministic per-host batches.

`load_split(dcfg, split)` reads one split (`dcfg` is `config.data`) from a local
source or tfds and returns a `Split` of uint8 NHWC images reduced to `num_bits`.
`batches(split, ...)` yields this host's rows of each global batch; global batch
s depends only on (seed, s), so training resumes bit-exactly with start_step=s
and the batch is the same whatever the number of hosts.

Sources (`dcfg.source`): 'idx' (MNIST-format files), 'npz' (downsampled-ImageNet
batches, or train.npz/test.npz holding `images` NHWC and optional `labels`),
'folder' (image files), 'tfds' (prepared data only unless dcfg.download),
'synthetic', and 'auto': dcfg.dir when given, then Debian's Fashion-MNIST, then
prepared tfds data. Missing data fails fast with a `UserError` and writes nothing.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import math
import os
import pathlib
import queue
import re
import threading
import zipfile
import zlib
from typing import Iterator, Optional

import numpy as np

from eiw_jax.errors import UserError

NAMES = ('mnist', 'fashion_mnist', 'cifar10', 'celeba', 'imagenet32',
         'imagenet64', 'synthetic')
SOURCES = ('auto', 'tfds', 'idx', 'npz', 'folder', 'synthetic')
DEBIAN_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
TFDS_NAMES = {'mnist': 'mnist', 'fashion_mnist': 'fashion_mnist',
              'cifar10': 'cifar10', 'celeba': 'celeb_a',
              'imagenet32': 'downsampled_imagenet/32x32',
              'imagenet64': 'downsampled_imagenet/64x64'}
IMAGE_EXTS = ('.png', '.jpg', '.jpeg')
_IDX_RE = re.compile(r'^(train|t10k)-(images|labels)[-.]idx[13]-ubyte(\.gz)?$',
                     re.IGNORECASE)
_IDX_DTYPES = {0x08: '>u1', 0x09: '>i1', 0x0B: '>i2', 0x0C: '>i4',
               0x0D: '>f4', 0x0E: '>f8'}


@dataclasses.dataclass
class Split:
  images: np.ndarray  # uint8 [N, H, W, C], values in [0, 2**num_bits)
  labels: Optional[np.ndarray]  # int32 [N], or None


def load_split(dcfg, split: str) -> Split:
  """Loads split 'train' or 'test' of `dcfg.name`, validated and bit-reduced."""
  if split not in ('train', 'test'):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  name, source = dcfg.name, dcfg.get('source', 'auto')
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
    where = _expand(dcfg.get('dir', '')) if source != 'tfds' else ''
    if source in ('idx', 'npz', 'folder') and not where:
      raise UserError(f'{name}: source {source!r} needs a directory; pass '
                      '--config.data.dir=DIR')
  images, labels = _LOADERS[source](dcfg, split, where)
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


def steps_per_epoch(split: Split, batch_size: int) -> int:
  """Full global batches per epoch (the incomplete last one is dropped)."""
  return len(split.images) // batch_size


def batches(split: Split, batch_size: int, *, seed: int, start_step: int = 0,
            process_index: int = 0, process_count: int = 1,
            shuffle: bool = True, repeat: bool = True,
            prefetch: int = 2) -> Iterator[np.ndarray]:
  """Yields this host's rows of each global batch, uint8 [B // P, H, W, C].

  Global batch s of epoch e = s // steps_per_epoch takes rows of a permutation
  drawn from (seed, e); host p gets its rows [p * B/P, (p + 1) * B/P).
  repeat=True loops forever and drops each epoch's incomplete last batch.
  repeat=False walks the split once; its last batch is returned short, not
  padded, so with several hosts a host's final slice may be short or empty
  (every host still yields the same number of batches). `prefetch` batches are
  prepared by a daemon thread that stops when the iterator is closed or dropped.
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
  per_host = batch_size // process_count
  lo, hi = process_index * per_host, (process_index + 1) * per_host

  def produce():
    for idx in _global_indices(n, batch_size, seed, start_step, shuffle, repeat):
      yield np.take(split.images, idx[lo:hi], axis=0)

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


def _expand(d):
  return os.path.abspath(os.path.expanduser(d)) if d else ''


def _tfds_default_dir():
  return _expand(os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets')


def _tfds_prepared(name, data_dir):
  """True if tfds data for `name` is prepared under data_dir (no tfds import)."""
  root = pathlib.Path(data_dir, TFDS_NAMES[name])
  return root.is_dir() and (any(root.glob('*/dataset_info.json'))
                            or any(root.glob('*/*/dataset_info.json')))


def _idx_files(d):
  if not os.path.isdir(d):
    return {}
  out = {}
  for f in sorted(os.listdir(d)):
    m = _IDX_RE.match(f)
    if m:
      out.setdefault((m.group(1).lower(), m.group(2).lower()), os.path.join(d, f))
  return out


def _first(paths):
  return next(iter(paths), None) is not None


def _detect(dcfg, d):
  """The kind of data in directory d, or None."""
  if _idx_files(d):
    return 'idx'
  if dcfg.name in TFDS_NAMES and _tfds_prepared(dcfg.name, d):
    return 'tfds'
  root = pathlib.Path(d)
  if _first(root.rglob('*.npz')):
    return 'npz'
  if _first(p for p in root.rglob('*') if p.suffix.lower() in IMAGE_EXTS):
    return 'folder'
  return None


def _resolve_auto(dcfg):
  """(source, directory) for source='auto'; never writes to disk."""
  name, d = dcfg.name, _expand(dcfg.get('dir', ''))
  if name == 'synthetic':
    return 'synthetic', ''
  if d:
    if not os.path.isdir(d):
      raise UserError(f'{name}: --config.data.dir={d} does not exist; pass an '
                      'existing directory or --config.data.dir= for the default')
    kind = _detect(dcfg, d)
    if kind is None:
      raise UserError(f'{name}: no IDX, npz, image or prepared tfds files in {d}; '
                      'point --config.data.dir at the data')
    return kind, d
  if name == 'fashion_mnist' and len(_idx_files(DEBIAN_FASHION_MNIST_DIR)) == 4:
    return 'idx', DEBIAN_FASHION_MNIST_DIR
  if _tfds_prepared(name, _tfds_default_dir()) or dcfg.get('download', False):
    return 'tfds', ''
  raise UserError(_missing_message(name))


_HINTS = {
    'fashion_mnist': ('install it with `apt-get install dataset-fashion-mnist` '
                      'or pass --config.data.dir=DIR with IDX files'),
    'mnist': ('pass --config.data.dir=DIR with the MNIST IDX files or add '
              '--config.data.download=True'),
    'cifar10': ('pass --config.data.dir=DIR with npz or image files or add '
                '--config.data.download=True'),
    'celeba': ('pass --config.data.dir=DIR with the CelebA images (e.g. '
               'img_align_celeba/)'),
}


def _missing_message(name):
  looked = f'the tfds data dir {_tfds_default_dir()}'
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
  _check_shape(dcfg, images.shape[1:], where)
  return images


def _check_shape(dcfg, hwc, where):
  h, w, c = hwc
  if h != w:
    raise UserError(f'{where}: images are {h}x{w}, not square; use the folder '
                    'source (it center-crops) or fix the data')
  if h != dcfg.image_size:
    raise UserError(f'{where}: images are {h}x{w} but image_size='
                    f'{dcfg.image_size}; set --config.data.image_size={h}')
  if c != dcfg.channels:
    raise UserError(f'{where}: images have {c} channels but channels='
                    f'{dcfg.channels}; set --config.data.channels={c}')


# ------------------------------------------------------------------- sources


def read_idx(path) -> np.ndarray:
  """Parses one IDX file (gzipped or not); UserError naming it if corrupt."""
  try:
    with open(path, 'rb') as f:
      raw = f.read()
    if raw[:2] == b'\x1f\x8b':
      raw = gzip.decompress(raw)
  except (OSError, EOFError, zlib.error) as e:
    raise UserError(f'{path}: cannot read IDX file ({e}); re-download it') from e
  if len(raw) < 4 or raw[:2] != b'\0\0' or raw[2] not in _IDX_DTYPES:
    raise UserError(f'{path}: not an IDX file (bad magic {raw[:4].hex()}); '
                    're-download it')
  ndim, dtype = raw[3], np.dtype(_IDX_DTYPES[raw[2]])
  if len(raw) < 4 + 4 * ndim:
    raise UserError(f'{path}: IDX header truncated; re-download it')
  dims = tuple(int(v) for v in np.frombuffer(raw, '>u4', ndim, 4))
  offset, want = 4 + 4 * ndim, math.prod(dims) * dtype.itemsize
  if len(raw) - offset != want:
    raise UserError(f'{path}: IDX header says {dims} ({want} bytes) but the file '
                    f'holds {len(raw) - offset}; it is truncated or corrupt, '
                    're-download it')
  return np.frombuffer(raw, dtype, offset=offset).reshape(dims).astype(
      dtype.newbyteorder('='))


def _load_idx(dcfg, split, d):
  files, prefix = _idx_files(d), {'train': 'train', 'test': 't10k'}[split]
  if (prefix, 'images') not in files:
    raise UserError(f'{dcfg.name}: no {prefix}-images-idx3-ubyte[.gz] in {d}; '
                    'point --config.data.dir at the IDX files')
  images = read_idx(files[prefix, 'images'])
  if images.ndim == 3:
    images = images[..., None]  # [N, H, W, 1]
  labels = files.get((prefix, 'labels'))
  return images, None if labels is None else read_idx(labels)


def _npy_shape(path, member):
  """Shape and dtype of `member` inside an npz, without loading it."""
  try:
    with zipfile.ZipFile(path) as zf, zf.open(member + '.npy') as fh:
      version = np.lib.format.read_magic(fh)
      read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
              else np.lib.format.read_array_header_2_0)
      shape, _, dtype = read(fh)
      return shape, dtype
  except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
    raise UserError(f'{path}: cannot read array {member!r} ({e}); re-download '
                    'it') from e


def _load_npz(dcfg, split, d):
  root = pathlib.Path(d)
  pattern = 'train_data_batch_*.npz' if split == 'train' else 'val_data.npz'
  files = sorted(root.rglob(pattern),
                 key=lambda p: (int(re.sub(r'\D', '', p.stem) or 0), str(p)))
  if not files:
    simple = sorted(root.rglob(f'{split}.npz'))
    if not simple:
      raise UserError(f'{dcfg.name}: no {pattern} or {split}.npz in {d}; point '
                      '--config.data.dir at the npz files')
    return _load_simple_npz(simple[0])
  shapes = [_npy_shape(f, 'data') for f in files]
  for f, (shape, dtype) in zip(files, shapes):
    if dtype != np.uint8 or len(shape) != 2 or shape[1] != shapes[0][0][1]:
      raise UserError(f'{f}: expected uint8 data [N, 3*H*W], got {dtype} '
                      f'{shape}; re-download it')
  size = int(round((shapes[0][0][1] / 3) ** 0.5))
  if 3 * size * size != shapes[0][0][1]:
    raise UserError(f'{files[0]}: rows of {shapes[0][0][1]} values are not '
                    '3*H*H; re-download it')
  _check_shape(dcfg, (size, size, 3), f'{dcfg.name} (npz {d})')
  n = sum(s[0][0] for s in shapes)
  images = np.empty((n, size, size, 3), np.uint8)  # filled batch by batch
  labels, start = np.empty((n,), np.int32), 0
  for f, ((k, _), _) in zip(files, shapes):
    try:
      with np.load(f) as z:
        images[start:start + k] = z['data'].reshape(k, 3, size, size).transpose(
            0, 2, 3, 1)
        labels[start:start + k] = np.ravel(z['labels']) - 1  # 1-based
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
      raise UserError(f'{f}: cannot read data/labels ({e}); re-download it') from e
    start += k
  return images, labels


def _load_simple_npz(path):
  try:
    with np.load(path) as z:
      return z['images'], (z['labels'] if 'labels' in z.files else None)
  except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
    raise UserError(f'{path}: expected an npz with `images` [N, H, W, C] uint8 '
                    f'({e}); fix the file') from e


def _square_resize(im, size):
  """Center-crops a PIL image to a square and resizes it to size x size."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  w, h = im.size
  s = min(w, h)
  left, top = (w - s) // 2, (h - s) // 2
  im = im.crop((left, top, left + s, top + s))
  if s != size:
    resample = (Image.Resampling.LANCZOS if s > size
                else Image.Resampling.BICUBIC)
    im = im.resize((size, size), resample)
  return im


def _read_image(path, size, channels):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      im = _square_resize(im.convert('L' if channels == 1 else 'RGB'), size)
      return np.asarray(im, np.uint8).reshape(size, size, channels)
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise UserError(f'{path}: cannot read image ({e}); remove or replace the '
                    'file') from e


def _folder_files(root, split):
  """Image paths of one split: root/{train,test}/, CelebA's partition file, or
  every 10th sorted file as test."""
  def images_under(d):
    return sorted(p for p in d.rglob('*') if p.suffix.lower() in IMAGE_EXTS)
  if (root / 'train').is_dir() and (root / 'test').is_dir():
    return images_under(root / split)
  files = images_under(root)
  partition = root / 'list_eval_partition.txt'
  if partition.is_file():  # CelebA: 0 train, 1 validation, 2 test
    part = dict(line.split()[:2] for line in partition.read_text().splitlines()
                if len(line.split()) >= 2)
    keep = '0' if split == 'train' else '2'
    return [p for p in files if part.get(p.name) == keep]
  return [p for i, p in enumerate(files) if (i % 10 == 9) == (split == 'test')]


def _load_folder(dcfg, split, d):
  if dcfg.channels not in (1, 3):
    raise UserError(f'{dcfg.name}: image folders give 1 or 3 channels, not '
                    f'{dcfg.channels}; set --config.data.channels=3')
  files = _folder_files(pathlib.Path(d), split)
  if not files:
    raise UserError(f'{dcfg.name}: no {split} images (png/jpg) in {d}; point '
                    '--config.data.dir at the image folder')
  size, c = dcfg.image_size, dcfg.channels
  images = np.empty((len(files), size, size, c), np.uint8)
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    for i, im in enumerate(pool.map(lambda p: _read_image(p, size, c), files)):
      images[i] = im
  return images, None


def _load_tfds(dcfg, split, d):
  """Reads tfds data prepared in d (or dcfg.dir, or the default data dir)."""
  name = dcfg.name
  if name not in TFDS_NAMES:
    raise UserError(f'{name}: not available from tfds; set --config.data.source')
  data_dir = d or _expand(dcfg.get('dir', '')) or _tfds_default_dir()
  if not _tfds_prepared(name, data_dir) and not dcfg.get('download', False):
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
    if not dcfg.get('download', False):
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
    raw = [np.asarray(_square_resize(Image.fromarray(np.squeeze(x)).convert(
        mode), dcfg.image_size)).reshape(dcfg.image_size, dcfg.image_size, -1)
           for x in raw]
  return np.stack(raw), labels


def synthetic_images(n, size, channels, seed):
  """n smooth random uint8 images (a few low-frequency waves plus noise)."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, n)
  yy, xx = np.meshgrid(*(np.linspace(0, 1, size, dtype=np.float32),) * 2,
                       indexing='ij')
  x = np.zeros((n, size, size, channels), np.float32)
  scale = 1 + labels[:, None, None, None] / 9  # the label sets the frequency
  for _ in range(3):
    fx, fy = rng.uniform(-1, 1, (2, n, 1, 1, 1)) * scale  # cycles per image
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1, channels))
    x += np.sin(2 * np.pi * (fx * xx[..., None] + fy * yy[..., None]) + phase)
  x = 0.5 + x / 6 + 0.03 * rng.standard_normal(x.shape, np.float32)
  return np.clip(np.round(x * 255), 0, 255).astype(np.uint8), labels


def _load_synthetic(dcfg, split, d):
  del d
  n = dcfg.get('num_synthetic', 256)
  n = n if split == 'train' else max(1, n // 4)
  return synthetic_images(n, dcfg.image_size, dcfg.channels,
                          seed=0 if split == 'train' else 1)


_LOADERS = {'idx': _load_idx, 'npz': _load_npz, 'folder': _load_folder,
            'tfds': _load_tfds, 'synthetic': _load_synthetic}
