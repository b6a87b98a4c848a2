"""Readers behind `eiw_jax.data.load_split`: one per source, files -> arrays
(image folders in folder.py, tensorflow-datasets in tfds_source.py).

Each `LOADERS[source](dcfg, split, d)` returns (images, labels): uint8 images
(NHWC for every source but tfds, which may return a list stacked as is) and
labels or None. Readers fail with a one-line `UserError` naming the bad file;
shape, dtype and bit-depth checks on the result are left to `eiw_jax.data`.
"""
from __future__ import annotations

import gzip
import math
import os
import pathlib
import pickle
import re
import zipfile
import zlib

import numpy as np

from eiw_jax.data.folder import load_folder
from eiw_jax.data.tfds_source import load_tfds
from eiw_jax.errors import UserError

CIFAR_SUBDIR = 'cifar-10-batches-py'
CIFAR_FILES = {'train': tuple(f'data_batch_{i}' for i in range(1, 6)),
               'test': ('test_batch',)}
_IDX_RE = re.compile(r'^(train|t10k)-(images|labels)[-.]idx[13]-ubyte(\.gz)?$',
                     re.IGNORECASE)
_IDX_DTYPES = {0x08: '>u1', 0x09: '>i1', 0x0B: '>i2', 0x0C: '>i4',
               0x0D: '>f4', 0x0E: '>f8'}


def idx_files(d):
  """{(prefix, kind): path} of the MNIST-style IDX files directly in d."""
  if not os.path.isdir(d):
    return {}
  out = {}
  for f in sorted(os.listdir(d)):
    m = _IDX_RE.match(f)
    if m:
      out.setdefault((m.group(1).lower(), m.group(2).lower()), os.path.join(d, f))
  return out


def cifar_dir(d):
  """Where CIFAR-10 python batches are: d, d/cifar-10-batches-py, or None."""
  for cand in (pathlib.Path(d), pathlib.Path(d, CIFAR_SUBDIR)):
    if any((cand / f).is_file() for f in ('data_batch_1', 'test_batch')):
      return cand
  return None


def check_shape(dcfg, hwc, where):
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


def _rgb_size(row_len, path):
  """H of rows holding one channel-major [3, H, H] image each."""
  size = int(round((row_len / 3) ** 0.5))
  if 3 * size * size != row_len:
    raise UserError(f'{path}: rows of {row_len} values are not 3*H*H; '
                    're-download it')
  return size


# ----------------------------------------------------------------------- idx


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
  files, prefix = idx_files(d), {'train': 'train', 'test': 't10k'}[split]
  if (prefix, 'images') not in files:
    raise UserError(f'{dcfg.name}: no {prefix}-images-idx3-ubyte[.gz] in {d}; '
                    'point --config.data.dir at the IDX files')
  images = read_idx(files[prefix, 'images'])
  if images.ndim == 3:
    images = images[..., None]  # [N, H, W, 1]
  labels = files.get((prefix, 'labels'))
  return images, None if labels is None else read_idx(labels)


# ----------------------------------------------------------------------- npz


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
  size = _rgb_size(shapes[0][0][1], files[0])
  check_shape(dcfg, (size, size, 3), f'{dcfg.name} (npz {d})')
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


# -------------------------------------------------------------------- pickle


class _Refused(pickle.UnpicklingError):
  """The pickle would call something other than numpy's array builders."""


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickles plain containers and numpy arrays only, never arbitrary code."""
  _ALLOWED = {('numpy', 'ndarray'), ('numpy', 'dtype'), ('_codecs', 'encode')}
  _ALLOWED |= {(f'numpy.{core}.{m}', f) for core in ('core', '_core')
               for m in ('multiarray', 'numeric')
               for f in ('_reconstruct', 'scalar', '_frombuffer')}

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise _Refused(f'{module}.{name}')
    return super().find_class(module, name)


def _read_cifar_batch(path):
  """(data uint8 [N, 3*H*H], labels [N]) of one CIFAR-10 python batch."""
  try:
    with open(path, 'rb') as f:
      batch = _ArrayUnpickler(f, encoding='bytes').load()
  except _Refused as e:
    raise UserError(f'{path}: refusing to load a pickle that calls {e}, not '
                    'just arrays; re-download cifar-10-python.tar.gz') from e
  except Exception as e:  # pylint: disable=broad-except
    reason = ': '.join([type(e).__name__] + str(e).strip().splitlines()[:1])
    raise UserError(f'{path}: cannot unpickle a CIFAR-10 batch ({reason}); it '
                    'is truncated or corrupt, re-download '
                    'cifar-10-python.tar.gz') from e
  rows = batch.get(b'data') if isinstance(batch, dict) else None
  labels = batch.get(b'labels') if isinstance(batch, dict) else None
  if (not isinstance(rows, np.ndarray) or rows.dtype != np.uint8
      or rows.ndim != 2 or not isinstance(labels, (list, tuple, np.ndarray))
      or len(labels) != len(rows)):
    raise UserError(f'{path}: expected a dict with uint8 b"data" [N, 3*H*W] '
                    'and N b"labels"; re-download cifar-10-python.tar.gz')
  return rows, np.asarray(labels, np.int32).reshape(-1)


def _load_cifar(dcfg, split, d):
  root = cifar_dir(d)
  missing = [f for f in CIFAR_FILES[split]
             if root is None or not (root / f).is_file()]
  if missing:
    raise UserError(f'{dcfg.name}: no {missing[0]} in {d} or {d}/'
                    f'{CIFAR_SUBDIR}; extract cifar-10-python.tar.gz and point '
                    '--config.data.dir at it')
  parts = [_read_cifar_batch(root / f) for f in CIFAR_FILES[split]]
  size = _rgb_size(parts[0][0].shape[1], root / CIFAR_FILES[split][0])
  images = np.empty((sum(len(r) for r, _ in parts), size, size, 3), np.uint8)
  start = 0
  for f, (rows, _) in zip(CIFAR_FILES[split], parts):
    if rows.shape[1] != 3 * size * size:
      raise UserError(f'{root / f}: rows of {rows.shape[1]} values, not '
                      f'{3 * size * size} as in the other batches; re-download')
    images[start:start + len(rows)] = rows.reshape(-1, 3, size, size).transpose(
        0, 2, 3, 1)  # [N, 3, H, W] -> [N, H, W, 3]
    start += len(rows)
  return images, np.concatenate([lab for _, lab in parts])


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
  n = dcfg.num_synthetic
  n = n if split == 'train' else max(1, n // 4)
  return synthetic_images(n, dcfg.image_size, dcfg.channels,
                          seed=0 if split == 'train' else 1)


LOADERS = {'idx': _load_idx, 'npz': _load_npz, 'pickle': _load_cifar,
           'folder': load_folder, 'tfds': load_tfds,
           'synthetic': _load_synthetic}
