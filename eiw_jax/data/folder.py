"""Source 'folder': image files (png/jpg) under one directory, read with PIL.

Split by train/ and test/ subfolders, CelebA's list_eval_partition.txt, or else
every 10th sorted file as test (so at least 10 images are needed). Each image is
centre-cropped to a square and resized to data.image_size.

Image modes. 8-bit gray and colour (L, RGB, palette, CMYK, YCbCr, 1-bit) are
converted to data.channels (colour to gray by luma, gray to colour by copying).
16-bit gray (PNG's I;16 and I) keeps its top 8 bits (v >> 8), so that the
pipeline's reduction to data.num_bits (>> 8 - num_bits) gives v >> 16 - num_bits,
the 16-bit value scaled to the model's bits; 16-bit colour is reduced the same way
by PIL. An alpha channel (RGBA, LA, or a palette with a transparent colour) is
dropped when every pixel is opaque; an image with transparent pixels is refused
in one line (what lies under them is not defined), as is any other mode.
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


_SIXTEEN_BIT = ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I')
_EIGHT_BIT = ('L', 'RGB', 'P', '1', 'CMYK', 'YCbCr')
_ALPHA = ('RGBA', 'LA', 'PA', 'RGBa', 'La')


def _eight_bit(im, path):
  """An opened image as 8-bit L or RGB (the module docstring's rules)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if im.mode in _SIXTEEN_BIT:
    values = np.asarray(im).astype(np.int64)
    if values.min() < 0 or values.max() > 0xFFFF:
      raise UserError(f'{path}: {im.mode} values outside 0..65535; convert the image to '
                      '8 or 16 bits per channel')
    return Image.fromarray((values >> 8).astype(np.uint8), 'L')
  if im.mode == 'P' and 'transparency' in im.info:
    im = im.convert('RGBA')
  if im.mode in _ALPHA:
    alpha = np.asarray(im.getchannel('A' if 'A' in im.getbands() else 'a'))
    if alpha.min() < 255:
      raise UserError(f'{path}: has transparent pixels ({im.mode}); flatten the images onto '
                      'a background first, or remove them')
    return im.convert('RGB' if im.mode.startswith(('RGB', 'P')) else 'L')
  if im.mode not in _EIGHT_BIT:
    raise UserError(f'{path}: image mode {im.mode} is not read (8-bit or 16-bit gray or '
                    'colour, opaque); convert the image')
  return im


def _read_image(path, size, channels):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      im = _eight_bit(im, path).convert('L' if channels == 1 else 'RGB')
      im = square_resize(im, size)
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
  root = pathlib.Path(d)
  files = _folder_files(root, split)
  if not files:
    raise UserError(_no_images(dcfg.name, split, root))
  size, c = dcfg.image_size, dcfg.channels
  images = np.empty((len(files), size, size, c), np.uint8)
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    for i, im in enumerate(pool.map(lambda p: _read_image(p, size, c), files)):
      images[i] = im
  return images, None


def _no_images(name, split, root) -> str:
  """Why a split of the folder is empty, and the fix."""
  found = sum(1 for p in root.rglob('*') if p.suffix.lower() in IMAGE_EXTS) if root.is_dir() else 0
  if not found:
    return (f'{name}: no images (png/jpg) in {root}; point --config.data.dir at the image '
            'folder')
  if (root / 'train').is_dir() and (root / 'test').is_dir():
    return f'{name}: no images in {root / split}; put the {split} images there'
  if (root / 'list_eval_partition.txt').is_file():
    return (f'{name}: list_eval_partition.txt in {root} assigns none of its {found} images to '
            f'the {split} split; fix the file, or remove it to take every 10th image as test')
  return (f'{name}: {root} holds {found} image(s) and no train/ and test/ subfolders, so every '
          f'10th image is a test image: too few for a {split} split; add images (10 or more), '
          'or put them in train/ and test/ subfolders')
