"""Tests for eiw_jax.data: sources on tiny files in tmp_path, and batching."""
import gc
import gzip
import os
import pickle
import struct
import threading
import time

import ml_collections
import numpy as np
import pytest
from PIL import Image

from eiw_jax import data
from eiw_jax.data import augment, pipeline, sources
from eiw_jax.errors import UserError


def make_cfg(**kw):
  cfg = dict(name='mnist', source='auto', dir='', download=False, image_size=4,
             channels=1, num_bits=8, batch_size=4, num_synthetic=24)
  cfg.update(kw)
  return ml_collections.ConfigDict(cfg)


def write_idx(path, array, gz=False):
  array = np.asarray(array, np.uint8)
  raw = struct.pack('>BBBB', 0, 0, 0x08, array.ndim)
  raw += struct.pack(f'>{array.ndim}I', *array.shape) + array.tobytes()
  with (gzip.open if gz else open)(path, 'wb') as f:
    f.write(raw)


def write_mnist_dir(d, gz, n_train=6, n_test=3, sep='-'):
  rng = np.random.default_rng(0)
  arrays = {}
  for prefix, n in (('train', n_train), ('t10k', n_test)):
    images = rng.integers(0, 256, (n, 4, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    ext = '.gz' if gz else ''
    write_idx(d / f'{prefix}-images{sep}idx3-ubyte{ext}', images, gz)
    write_idx(d / f'{prefix}-labels{sep}idx1-ubyte{ext}', labels, gz)
    arrays[prefix] = images, labels
  return arrays


def index_split(n, size=2):
  """A split whose image i is filled with the value i (n <= 256)."""
  images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None],
                           (n, size, size, 1)).copy()
  return data.Split(images, np.arange(n))


def ids(batch):
  return batch[:, 0, 0, 0].astype(int).tolist()


# ------------------------------------------------------------------- sources


@pytest.mark.parametrize('gz,sep', [(True, '-'), (False, '-'), (False, '.')])
def test_idx_round_trip(tmp_path, gz, sep):
  arrays = write_mnist_dir(tmp_path, gz, sep=sep)
  for split, prefix in (('train', 'train'), ('test', 't10k')):
    for source in ('idx', 'auto'):
      s = data.load_split(make_cfg(dir=str(tmp_path), source=source), split)
      np.testing.assert_array_equal(s.images, arrays[prefix][0][..., None])
      np.testing.assert_array_equal(s.labels, arrays[prefix][1])
      assert s.images.dtype == np.uint8 and s.labels.dtype == np.int32


def test_idx_corrupt_files_raise_user_error(tmp_path):
  path = tmp_path / 'x-idx3-ubyte'
  write_idx(path, np.zeros((3, 4, 4)))
  raw = path.read_bytes()
  path.write_bytes(raw[:-5])
  with pytest.raises(UserError, match='x-idx3-ubyte.*truncated'):
    sources.read_idx(path)
  path.write_bytes(b'\x12\x34' + raw[2:])
  with pytest.raises(UserError, match='x-idx3-ubyte.*bad magic'):
    sources.read_idx(path)
  path.write_bytes(gzip.compress(raw)[:-12])
  with pytest.raises(UserError, match='x-idx3-ubyte.*cannot read'):
    sources.read_idx(path)
  path.write_bytes(b'\x1f\x8b' + b'not gzip at all')
  with pytest.raises(UserError, match='x-idx3-ubyte'):
    sources.read_idx(path)


def test_truncated_idx_in_dataset_dir(tmp_path):
  write_mnist_dir(tmp_path, gz=True)
  p = tmp_path / 't10k-images-idx3-ubyte.gz'
  p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-1]))
  with pytest.raises(UserError, match='t10k-images-idx3-ubyte.gz'):
    data.load_split(make_cfg(dir=str(tmp_path)), 'test')


def write_imagenet_batch(path, images, labels):
  n = len(images)
  flat = images.transpose(0, 3, 1, 2).reshape(n, -1)  # channel-major rows
  np.savez(path, data=flat, labels=np.asarray(labels) + 1)  # 1-based


def test_npz_round_trip_is_nhwc(tmp_path):
  rng = np.random.default_rng(0)
  batches = []
  for k in (1, 2, 10):  # 10 must come after 2 (numeric order)
    im = rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    im[..., 0] = 255  # channel 0 all 255
    im[:, 0, :, 1] = 7  # row 0 of channel 1 is 7
    write_imagenet_batch(tmp_path / f'train_data_batch_{k}.npz', im, [k] * 3)
    batches.append(im)
  write_imagenet_batch(tmp_path / 'val_data.npz', batches[0][:2], [0, 5])
  cfg = make_cfg(name='imagenet32', dir=str(tmp_path), image_size=4, channels=3)
  train = data.load_split(cfg, 'train')
  np.testing.assert_array_equal(train.images, np.concatenate(batches))
  assert (train.images[..., 0] == 255).all()
  assert (train.images[:, 0, :, 1] == 7).all()
  np.testing.assert_array_equal(train.labels, [1] * 3 + [2] * 3 + [10] * 3)
  test = data.load_split(cfg.copy_and_resolve_references(), 'test')
  np.testing.assert_array_equal(test.labels, [0, 5])
  with pytest.raises(UserError, match='image_size=4'):
    data.load_split(make_cfg(name='imagenet32', dir=str(tmp_path), image_size=32,
                             channels=3), 'test')


def test_simple_npz_refuses_non_uint8(tmp_path):
  np.savez(tmp_path / 'train.npz', images=np.full((2, 4, 4, 1), 300, np.int64))
  with pytest.raises(UserError, match=r'int64 with values in \[300, 300\]'):
    data.load_split(make_cfg(dir=str(tmp_path), source='npz'), 'train')
  np.savez(tmp_path / 'train.npz', images=np.full((2, 4, 4, 1), 9, np.uint8))
  s = data.load_split(make_cfg(dir=str(tmp_path), source='npz'), 'train')
  assert s.images.shape == (2, 4, 4, 1) and s.labels is None


def write_cifar_batch(path, images, labels, protocol=2):
  """A CIFAR-10 python batch: a pickled dict of channel-major uint8 rows."""
  rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # [N, 3*H*W]
  batch = {b'batch_label': b'tiny', b'labels': [int(v) for v in labels],
           b'data': rows, b'filenames': [b'%d.png' % i for i in labels]}
  with open(path, 'wb') as f:
    pickle.dump(batch, f, protocol=protocol)


def write_cifar_dir(root, n=2):
  """root/cifar-10-batches-py with 5 train batches and a test batch of n 4x4
  images; image 0 of data_batch_1 is pixel[h, w, c] = 100 c + 10 h + w."""
  d = root / 'cifar-10-batches-py'
  d.mkdir(parents=True)
  rng = np.random.default_rng(0)
  train = []
  for k in range(1, 6):
    im = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    if k == 1:
      h, w, c = np.meshgrid(*(np.arange(4),) * 2, np.arange(3), indexing='ij')
      im[0] = 100 * c + 10 * h + w
    write_cifar_batch(d / f'data_batch_{k}', im, [k] * n)
    train.append(im)
  test = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
  write_cifar_batch(d / 'test_batch', test, range(n), pickle.HIGHEST_PROTOCOL)
  return d, np.concatenate(train), test


@pytest.mark.parametrize('level', ['parent', 'batches'])
def test_cifar_pickle_round_trip_is_nhwc(tmp_path, level):
  d, train, test = write_cifar_dir(tmp_path)
  where = tmp_path if level == 'parent' else d
  for source in ('auto', 'pickle'):
    cfg = make_cfg(name='cifar10', source=source, dir=str(where), channels=3)
    s = data.load_split(cfg, 'train')
    np.testing.assert_array_equal(s.images, train)
    assert s.images[0, 1, 2, 0] == 12 and s.images[0, 3, 0, 2] == 230
    assert s.images[0, 0, 3, 1] == 103
    np.testing.assert_array_equal(s.labels, np.repeat(np.arange(1, 6), 2))
    assert s.images.dtype == np.uint8 and s.labels.dtype == np.int32
    t = data.load_split(cfg, 'test')
    np.testing.assert_array_equal(t.images, test)
    np.testing.assert_array_equal(t.labels, [0, 1])
  with pytest.raises(UserError, match=r'--config\.data\.image_size=4'):
    data.load_split(make_cfg(name='cifar10', dir=str(where), image_size=32,
                             channels=3), 'test')


class _Evil:
  def __reduce__(self):
    return (os.getcwd, ())


def test_cifar_bad_pickles_raise_one_line_user_error(tmp_path):
  d, _, _ = write_cifar_dir(tmp_path)
  cfg = make_cfg(name='cifar10', dir=str(tmp_path), channels=3)
  p = d / 'test_batch'
  raw = p.read_bytes()
  bad = {'truncated or corrupt': raw[:len(raw) // 2],
         'corrupt': b'\x80\x02junk',
         'refusing to load': pickle.dumps({b'data': _Evil()}),
         'expected a dict': pickle.dumps({b'labels': [0]})}
  for match, contents in bad.items():
    p.write_bytes(contents)
    with pytest.raises(UserError, match=f'test_batch.*{match}') as e:
      data.load_split(cfg, 'test')
    assert '\n' not in str(e.value)
  (d / 'data_batch_3').unlink()
  with pytest.raises(UserError, match='no data_batch_3'):
    data.load_split(cfg, 'train')


def save_png(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)


def test_folder_center_crops_and_resizes(tmp_path):
  wide = np.zeros((8, 24, 3), np.uint8)  # H=8, W=24: the middle third is red
  wide[:, 8:16, 0] = 255
  save_png(tmp_path / 'train' / 'a' / 'wide.png', wide)
  save_png(tmp_path / 'train' / 'b.png', np.full((8, 8, 3), 40, np.uint8))
  save_png(tmp_path / 'test' / 'c.png', np.full((4, 4, 3), 90, np.uint8))
  cfg = make_cfg(name='celeba', dir=str(tmp_path), image_size=4, channels=3)
  train = data.load_split(cfg, 'train')
  assert train.images.shape == (2, 4, 4, 3)
  assert (train.images[0, ..., 0] >= 250).all()  # the red middle square
  assert (train.images[0, ..., 1:] <= 5).all()
  assert np.abs(train.images[1].astype(int) - 40).max() <= 1
  test = data.load_split(cfg, 'test')
  np.testing.assert_array_equal(test.images, np.full((1, 4, 4, 3), 90))
  gray = data.load_split(make_cfg(name='celeba', dir=str(tmp_path), channels=1),
                         'test')
  assert gray.images.shape == (1, 4, 4, 1)


def test_folder_split_without_subfolders_and_bad_image(tmp_path):
  for i in range(20):
    save_png(tmp_path / f'{i:03d}.png', np.full((4, 4, 3), i, np.uint8))
  cfg = make_cfg(name='celeba', source='folder', dir=str(tmp_path), channels=3)
  train, test = data.load_split(cfg, 'train'), data.load_split(cfg, 'test')
  assert sorted(ids(test.images)) == [9, 19]
  assert sorted(ids(train.images) + ids(test.images)) == list(range(20))
  (tmp_path / 'list_eval_partition.txt').write_text(
      ''.join(f'{i:03d}.png {i % 3}\n' for i in range(20)))
  assert ids(data.load_split(cfg, 'test').images) == list(range(2, 20, 3))
  (tmp_path / '003.png').write_bytes(b'not a png')
  with pytest.raises(UserError, match='003.png'):
    data.load_split(cfg, 'train')


def test_synthetic_is_deterministic_and_smooth():
  cfg = make_cfg(name='synthetic', image_size=16, channels=3, num_synthetic=20)
  a, b = data.load_split(cfg, 'train'), data.load_split(cfg, 'train')
  np.testing.assert_array_equal(a.images, b.images)
  np.testing.assert_array_equal(a.labels, b.labels)
  test = data.load_split(cfg, 'test')
  assert a.images.shape == (20, 16, 16, 3)
  assert test.images.shape == (5, 16, 16, 3)
  assert not np.array_equal(a.images[:5], test.images)
  x = a.images.astype(float)
  neighbour = np.abs(np.diff(x, axis=2)).mean()
  far = np.abs(x[:, :, :8] - x[:, :, 8:]).mean()
  assert neighbour < 0.4 * far  # spatially smooth, not white noise
  assert x.std() > 10


@pytest.mark.parametrize('bits', [1, 3, 5])
def test_num_bits_reduction(bits):
  full = data.load_split(make_cfg(name='synthetic'), 'train').images
  low = data.load_split(make_cfg(name='synthetic', num_bits=bits),
                        'train').images
  np.testing.assert_array_equal(low, full >> (8 - bits))
  assert 2**(bits - 1) <= low.max() < 2**bits and low.dtype == np.uint8


def test_shape_mismatch_names_the_config_key(tmp_path):
  write_mnist_dir(tmp_path, gz=False)
  with pytest.raises(UserError, match=r'--config\.data\.image_size=4'):
    data.load_split(make_cfg(dir=str(tmp_path), image_size=28), 'train')
  with pytest.raises(UserError, match=r'--config\.data\.channels=1'):
    data.load_split(make_cfg(dir=str(tmp_path), channels=3), 'train')


def test_missing_dataset_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
  monkeypatch.setattr(pipeline, 'DEBIAN_FASHION_MNIST_DIR', str(tmp_path / 'deb'))
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'tfds'))
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  for name in ('fashion_mnist', 'mnist', 'cifar10', 'celeba', 'imagenet64'):
    for source in ('auto', 'tfds'):
      t0 = time.time()
      with pytest.raises(UserError) as e:
        data.load_split(make_cfg(name=name, source=source), 'train')
      assert time.time() - t0 < 2
      msg = str(e.value)
      assert '\n' not in msg and name in msg and '--config.data' in msg
  assert 'apt-get install dataset-fashion-mnist' in str(
      pytest.raises(UserError, data.load_split, make_cfg(name='fashion_mnist'),
                    'test').value)
  with pytest.raises(UserError, match='cifar-10-python.tar.gz, extract it'):
    data.load_split(make_cfg(name='cifar10'), 'train')
  with pytest.raises(UserError, match='does not exist'):
    data.load_split(make_cfg(dir=str(tmp_path / 'nowhere')), 'train')
  assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------- batches


def take(it, k):
  return [next(it) for _ in range(k)]


def test_batches_deterministic_per_seed():
  split = index_split(20)
  a = take(data.batches(split, 4, seed=3), 12)
  b = take(data.batches(split, 4, seed=3, prefetch=0), 12)
  c = take(data.batches(split, 4, seed=4), 12)
  assert [ids(x) for x in a] == [ids(x) for x in b]
  assert [ids(x) for x in a] != [ids(x) for x in c]
  assert a[0].shape == (4, 2, 2, 1) and a[0].dtype == np.uint8


def test_start_step_equals_skipping():
  split = index_split(18)
  full = [ids(x) for x in take(data.batches(split, 4, seed=1), 13)]
  for s in (0, 3, 4, 9):  # 4 steps per epoch: crosses epoch boundaries
    resumed = [ids(x) for x in take(data.batches(split, 4, seed=1, start_step=s),
                                    13 - s)]
    assert resumed == full[s:]


def test_host_shards_concatenate_to_global_batch():
  split = index_split(24)
  one = take(data.batches(split, 8, seed=5), 7)
  shards = [take(data.batches(split, 8, seed=5, process_index=p,
                              process_count=2, start_step=2), 5)
            for p in range(2)]
  for s in range(5):
    assert shards[0][s].shape == (4, 2, 2, 1)
    np.testing.assert_array_equal(
        np.concatenate([shards[0][s], shards[1][s]]), one[s + 2])


def test_epochs_are_reshuffled_and_drop_the_remainder():
  split = index_split(10)
  got = [ids(x) for x in take(data.batches(split, 3, seed=0), 9)]
  epochs = [sum(got[3 * e:3 * e + 3], []) for e in range(3)]
  for e in epochs:
    assert len(set(e)) == 9 and set(e) <= set(range(10))
  assert epochs[0] != epochs[1] != epochs[2]
  ordered = [ids(x) for x in take(data.batches(split, 3, seed=0, shuffle=False),
                                  4)]
  assert ordered == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [0, 1, 2]]


def test_eval_mode_covers_every_example_once():
  split = index_split(10)
  got = list(data.batches(split, 4, seed=0, shuffle=False, repeat=False))
  assert [ids(x) for x in got] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
  hosts = [list(data.batches(split, 4, seed=0, shuffle=False, repeat=False,
                             process_index=p, process_count=2)) for p in range(2)]
  assert [len(h) for h in hosts] == [3, 3]
  assert [len(b) for b in hosts[1]] == [2, 2, 0]
  assert sorted(sum((ids(b) for h in hosts for b in h), [])) == list(range(10))
  shuffled = list(data.batches(split, 4, seed=2, shuffle=True, repeat=False))
  assert sorted(sum(map(ids, shuffled), [])) == list(range(10))
  assert list(data.batches(split, 4, seed=0, repeat=False, start_step=2,
                           shuffle=False))[0].shape[0] == 2


def test_batch_size_errors():
  with pytest.raises(UserError, match='divisible'):
    data.batches(index_split(8), 3, seed=0, process_count=2)
  with pytest.raises(UserError, match='batch_size'):
    data.batches(index_split(3), 4, seed=0)


def test_prefetch_thread_stops_when_iterator_is_dropped():
  def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == 'eiw-data-prefetch']
  before = len(prefetch_threads())
  it = data.batches(index_split(16), 4, seed=0, prefetch=2)
  next(it)
  assert len(prefetch_threads()) == before + 1
  del it
  gc.collect()
  deadline = time.time() + 2
  while len(prefetch_threads()) > before and time.time() < deadline:
    time.sleep(0.01)
  assert len(prefetch_threads()) == before


def test_prefetch_propagates_errors(monkeypatch):
  def failing(*args):
    yield np.arange(2)
    raise RuntimeError('boom')
  monkeypatch.setattr(pipeline, '_global_indices', failing)
  it = data.batches(index_split(4), 2, seed=0)
  assert ids(next(it)) == [0, 1]
  with pytest.raises(RuntimeError, match='boom'):
    next(it)


# -------------------------------------------------------------- augmentation


def test_augment_flip_translate_matches_pad_translate_crop():
  """eiw_jax.data.augment against an independent pad / shift / crop (DenseFlow's recipe)."""
  rng = np.random.default_rng(3)
  x = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
  flip, shift = augment.draws('flip_translate', 32, 64, seed=1, step=7)
  assert set(np.unique(shift)) == {-1, 0, 1} and 0.3 < flip.mean() < 0.7
  out = augment.apply(x, flip, shift)
  assert out.shape == x.shape and out.dtype == np.uint8
  for b in range(64):
    img = x[b, :, ::-1] if flip[b] else x[b]
    padded = np.pad(img, ((2, 2), (2, 2), (0, 0)), mode='edge')   # [36, 36, 3]
    dy, dx = shift[b]
    np.testing.assert_array_equal(out[b], padded[2 - dy:34 - dy, 2 - dx:34 - dx])
  _, shift64 = augment.draws('flip_translate', 64, 4096, seed=0, step=0)
  assert shift64.min() == -3 and shift64.max() == 3
  assert not augment.draws('flip', 32, 64, seed=1, step=7)[1].any()


def test_augmented_batches_are_a_function_of_seed_and_step():
  split = data.Split(np.random.default_rng(0).integers(0, 256, (24, 8, 8, 1), np.uint8), None)
  kw = dict(seed=5, prefetch=0, augment='flip_translate')
  plain = data.batches(split, 4, seed=5, prefetch=0)
  aug = data.batches(split, 4, **kw)
  changed = 0
  for _ in range(12):
    a, p = next(aug), next(plain)
    assert a.shape == p.shape == (4, 8, 8, 1) and a.dtype == np.uint8
    changed += int(not np.array_equal(a, p))
  assert changed >= 6  # almost every batch is transformed
  # Resume (start_step) and a second pass give the same batches.
  first = [next(data.batches(split, 4, **kw)) for _ in range(2)]
  np.testing.assert_array_equal(first[0], first[1])
  it = data.batches(split, 4, **kw)
  skipped = [next(it) for _ in range(9)][7:]
  resumed = data.batches(split, 4, start_step=7, **kw)
  for a in skipped:
    np.testing.assert_array_equal(a, next(resumed))
  # Two hosts' rows concatenate to the one-host global batch.
  hosts = [next(data.batches(split, 4, start_step=3, process_index=p, process_count=2, **kw))
           for p in range(2)]
  np.testing.assert_array_equal(np.concatenate(hosts),
                                next(data.batches(split, 4, start_step=3, **kw)))


def test_flip_mirrors_about_half_the_rows():
  # Image i holds column index + 10 * i, so a flip is visible and identifiable.
  n, size = 16, 4
  images = (np.arange(size)[None, None, :, None] + 10 * np.arange(n)[:, None, None, None])
  images = np.broadcast_to(images, (n, size, size, 1)).astype(np.uint8).copy()
  split = data.Split(images, None)
  it = data.batches(split, n, seed=0, shuffle=False, prefetch=0, augment='flip')
  flips = []
  for _ in range(8):
    batch = next(it)
    for b in range(n):
      if np.array_equal(batch[b], images[b, :, ::-1]):
        flips.append(True)
      else:
        np.testing.assert_array_equal(batch[b], images[b])
        flips.append(False)
  assert 0.35 < np.mean(flips) < 0.65
  off = next(data.batches(split, n, seed=0, shuffle=False, prefetch=0, augment='none'))
  np.testing.assert_array_equal(off, images)
  with pytest.raises(UserError, match='data.augment'):
    data.batches(split, n, seed=0, augment='rotate')
