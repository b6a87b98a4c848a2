"""Reading PyTorch checkpoints without PyTorch, and without running code from them.

`torch.save` writes a zip archive: `<root>/data.pkl`, a pickle of the saved object,
and `<root>/data/<key>`, the raw bytes of each tensor storage, which the pickle
names by persistent id. Plain `pickle.load` on such a file runs whatever the
pickle's author wants (a pickle may call any importable function). `load` reads it
with an unpickler that resolves only the handful of globals a state dict or
`argparse.Namespace` needs, each to a local stand-in that builds numpy data:

    collections.OrderedDict          -> collections.OrderedDict
    torch.<Float|Long|...>Storage    -> a dtype marker
    torch._utils._rebuild_tensor_v2  -> `Tensor` (a lazy, bounds-checked view of a storage)
    torch._utils._rebuild_parameter  -> the same `Tensor`
    argparse.Namespace               -> `Namespace` (a plain attribute holder)

Any other global (os.system, builtins.eval, ...) stops the load with a `UserError`
naming it, before anything of it is called. Tensors are read from the archive only
when asked (`Tensor.numpy()`), so a checkpoint's optimiser state costs no memory
unless it is used.
"""
from __future__ import annotations

import collections
import io
import pickle
import zipfile
from typing import Any, NamedTuple

import numpy as np

from eiw_jax.errors import UserError


def _bfloat16():
  import ml_dtypes  # pylint: disable=g-import-not-at-top  (installed with jax)
  return ml_dtypes.bfloat16


_STORAGES = {'FloatStorage': np.float32, 'DoubleStorage': np.float64,
             'HalfStorage': np.float16, 'BFloat16Storage': _bfloat16,
             'LongStorage': np.int64, 'IntStorage': np.int32, 'ShortStorage': np.int16,
             'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_}


def _dtype(storage_name: str) -> np.dtype:
  kind = _STORAGES[storage_name]
  return np.dtype(kind() if kind is _bfloat16 else kind)


# The first pickle of a file written by torch.save before torch 1.6 (not a zip archive).
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c

# What the unpickler hands to the pickle is immutable (str and tuple subclasses
# without a __dict__), so no BUILD opcode of the file can change it after checking.
class _StorageName(str):
  """What the pickle's `torch.<X>Storage` global resolves to."""
  __slots__ = ()


class Namespace:
  """Stands in for argparse.Namespace: the pickle's BUILD fills its attributes."""


class Tensor(NamedTuple):
  """A tensor of the checkpoint: shape and dtype now, values on `numpy()`."""
  archive: Any           # the _Archive it reads from
  key: str               # its storage: <root>/data/<key>
  storage: str           # the storage's element type ('FloatStorage', ...)
  numel: int             # the storage's length in elements
  offset: int
  shape: tuple
  stride: tuple

  @property
  def dtype(self) -> np.dtype:
    return _dtype(self.storage)

  def numpy(self) -> np.ndarray:
    """The values, as a new native-endian array (bounds checked against the storage)."""
    data = self.archive.storage(self.key, self.dtype, self.numel)
    if any(n == 0 for n in self.shape):
      return np.zeros(self.shape, self.dtype)
    last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
    if last >= data.size:
      raise UserError(f'{self.archive.path}: a tensor of shape {self.shape} reads past '
                      f'the end of storage {self.key}; the file is damaged')
    view = np.lib.stride_tricks.as_strided(
        data[self.offset:], self.shape, [s * data.itemsize for s in self.stride],
        writeable=False)
    return np.array(view, dtype=self.dtype)


def _int_tuple(value, name: str) -> tuple:
  if not isinstance(value, (tuple, list)) or not all(
      isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
    raise UserError(f'a tensor in the checkpoint has an invalid {name} {value!r:.80}; '
                    'the file is damaged')
  return tuple(value)


def _rebuild_tensor(storage, offset, shape, stride, *unused) -> Tensor:
  """torch._utils._rebuild_tensor_v2's arguments (storage, storage offset, size,
  stride, requires_grad, backward hooks[, metadata]) -> `Tensor`."""
  if not isinstance(storage, _StorageRef):
    raise UserError('a tensor in the checkpoint is not backed by a storage of the archive; '
                    'the file is damaged')
  shape, stride = _int_tuple(shape, 'shape'), _int_tuple(stride, 'stride')
  (offset,) = _int_tuple((offset,), 'storage offset')
  if len(shape) != len(stride):
    raise UserError(f'a tensor in the checkpoint has shape {shape} but strides {stride}; '
                    'the file is damaged')
  return Tensor(storage.archive, storage.key, storage.storage, storage.numel, offset,
                shape, stride)


def _rebuild_parameter(tensor, *unused) -> Tensor:
  """torch._utils._rebuild_parameter(data, requires_grad, backward_hooks) -> the data."""
  if not isinstance(tensor, Tensor):
    raise UserError('a parameter in the checkpoint holds no tensor; the file is damaged')
  return tensor


class _StorageRef(NamedTuple):
  """A storage named by the pickle's persistent id."""
  archive: Any
  key: str
  storage: str
  numel: int


def _allowed(module: str, name: str):
  if (module, name) == ('collections', 'OrderedDict'):
    return collections.OrderedDict
  if (module, name) == ('argparse', 'Namespace'):
    return Namespace
  if module == 'torch._utils' and name == '_rebuild_tensor_v2':
    return _rebuild_tensor
  if module == 'torch._utils' and name == '_rebuild_parameter':
    return _rebuild_parameter
  if module == 'torch' and name in _STORAGES:
    return _StorageName(name)
  return None


class _Unpickler(pickle.Unpickler):
  """Resolves only `_allowed` globals; storages come from `archive` (None: a plain pickle)."""

  def __init__(self, data: bytes, path: str, archive: '_Archive | None'):
    super().__init__(io.BytesIO(data))
    self.path, self.archive = path, archive

  def find_class(self, module, name):
    found = _allowed(module, name)
    if found is None:
      raise UserError(f'{self.path} refers to {module}.{name}, which no checkpoint of '
                      'tensors and settings needs; refusing to load it (unpickling it '
                      'could run code)')
    return found

  def persistent_load(self, pid):
    if self.archive is None:
      raise UserError(f'{self.path} refers to tensor storage but is no PyTorch zip archive')
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'
            and isinstance(pid[1], _StorageName) and isinstance(pid[2], str)
            and isinstance(pid[4], int) and not isinstance(pid[4], bool) and pid[4] >= 0):
      raise UserError(f'{self.path} holds an unknown kind of tensor storage ({pid!r:.80}); '
                      'the file is damaged or not a PyTorch checkpoint')
    _, kind, key, _, numel = pid
    return _StorageRef(self.archive, key, str(kind), numel)


class _Archive:
  """A torch.save zip archive: its root folder, members and byte order."""

  def __init__(self, path: str, zf: zipfile.ZipFile):
    self.path, self.zip = path, zf
    roots = [n[:-len('data.pkl')] for n in zf.namelist() if n.endswith('data.pkl')
             and n.count('/') == 1]
    if len(roots) != 1:
      raise UserError(f'{path} is a zip file but not one written by torch.save '
                      '(no single <name>/data.pkl in it)')
    self.root = roots[0]
    order = self._member('byteorder')
    self.big_endian = order is not None and zf.read(order).strip() == b'big'
    self._storages = {}

  def _member(self, name: str):
    full = self.root + name
    return full if full in self.zip.NameToInfo else None

  def read(self, name: str) -> bytes:
    member = self._member(name)
    if member is None:
      raise UserError(f'{self.path} has no {self.root}{name}; the file is damaged')
    return self.zip.read(member)

  def storage(self, key: str, dtype: np.dtype, numel: int) -> np.ndarray:
    """Storage `key` as a 1-D array (read once, kept while the archive is open)."""
    if key not in self._storages:
      member = self._member(f'data/{key}')
      if member is None:
        raise UserError(f'{self.path} has no {self.root}data/{key}; the file is damaged')
      size = self.zip.getinfo(member).file_size
      if size != numel * dtype.itemsize:  # checked before reading anything
        raise UserError(f'{self.path}: storage {key} holds {size} bytes, not the '
                        f'{numel} x {dtype.itemsize} its tensors need; the file is damaged')
      self._storages[key] = np.frombuffer(self.zip.read(member),
                                          dtype.newbyteorder('>' if self.big_endian else '<'))
    return self._storages[key]


class Checkpoint:
  """An open checkpoint file: `.obj` is the unpickled object (dicts, lists, numbers,
  strings, `Tensor`, `Namespace`); tensors read from the file while it is open."""

  def __init__(self, path: str):
    self.path = path
    self._zip = None
    try:
      if zipfile.is_zipfile(path):
        self._zip = zipfile.ZipFile(path)
        archive = _Archive(path, self._zip)
        data = archive.read('data.pkl')
      else:
        archive = None
        with open(path, 'rb') as f:
          data = f.read()
    except OSError as e:
      raise UserError(f'cannot read {path} ({e.strerror or e}); check the path') from e
    except zipfile.BadZipFile as e:
      raise UserError(f'{path} is a damaged zip file ({e})') from e
    try:
      self.obj = _Unpickler(data, path, archive).load()
      if archive is None and self.obj == _LEGACY_MAGIC:
        raise UserError(f'{path} is in the PyTorch format of before torch 1.6, which is not '
                        'supported; load and torch.save it again with a newer torch')
    except UserError:
      self.close()
      raise
    except Exception as e:  # a truncated or foreign file: pickle raises many kinds
      self.close()
      if archive is None:
        raise UserError(f'{path} is neither a PyTorch zip checkpoint nor a readable pickle '
                        f'({type(e).__name__}: {" ".join(str(e).split())[:120]})') from e
      raise UserError(f'{path}: its pickle is unreadable ({type(e).__name__}: '
                      f'{" ".join(str(e).split())[:120]}); the file is damaged') from e

  def close(self):
    if self._zip is not None:
      self._zip.close()
      self._zip = None

  def __enter__(self) -> 'Checkpoint':
    return self

  def __exit__(self, *unused):
    self.close()


def load(path: str) -> Any:
  """The object in a torch.save file (or a plain pickle such as DenseFlow's
  args.pickle) with every tensor read into a numpy array. Only `_allowed` globals
  are resolved: anything else raises UserError naming it."""
  with Checkpoint(path) as ckpt:
    return _materialise(ckpt.obj)


def _materialise(obj):
  if isinstance(obj, Tensor):
    return obj.numpy()
  if isinstance(obj, dict):
    return {k: _materialise(v) for k, v in dict.items(obj)}
  if isinstance(obj, (list, tuple)):
    return [_materialise(v) for v in obj] if isinstance(obj, list) else tuple(
        _materialise(v) for v in obj)
  if isinstance(obj, Namespace):
    return {k: _materialise(v) for k, v in vars(obj).items()}
  return obj
