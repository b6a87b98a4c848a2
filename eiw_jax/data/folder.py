"""Source 'folder': image files (png/jpg) under one directory, read with PIL.

Split by train/ and test/ subfolders, CelebA's list_eval_partition.txt, or else
every 10th sorted file as test. Each image is centre-cropped to a square and
resized to data.image_size.
"""
from __future__ import annotations

import concurrent.futures
import os
import pathlib

import numpy as np

from eiw_jax.errors import UserError

IMAGE_EXTS = ('.png', '.jpg', '.jpeg')

def square_resize(im, size):
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
      im = square_resize(im.convert('L' if channels == 1 else 'RGB'), size)
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


def load_folder(dcfg, split, d):
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


