"""The folder source's image modes (data/folder.py): 16-bit gray scaled to the model's
bits, alpha dropped only where every pixel is opaque, a split too small named as such,
images reached through links (a symlink farm on a shared disk)."""
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from eiw_jax import data
from eiw_jax.errors import UserError


def _cfg(root, **kw):
  cfg = dict(name='celeba', source='folder', dir=str(root), download=False, image_size=4,
             channels=1, num_bits=8, batch_size=1, num_synthetic=1)
  cfg.update(kw)
  return ml_collections.ConfigDict(cfg)


def _save(path, image):
  path.parent.mkdir(parents=True, exist_ok=True)
  image.save(path)


def _sixteen_bit(root):
  """A 4x4 16-bit gray image in train/ and test/; returns its values."""
  values = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4099 + 7).astype(np.uint16)
  for split in ('train', 'test'):
    _save(root / split / 'a.png', Image.fromarray(values))
  assert Image.open(root / 'test' / 'a.png').mode == 'I;16'
  return values.astype(np.int64)


@pytest.mark.parametrize('num_bits', [8, 5])
def test_16_bit_gray_is_scaled_to_the_models_bits(num_bits, tmp_path):
  values = _sixteen_bit(tmp_path)
  images = data.load_split(_cfg(tmp_path, num_bits=num_bits), 'test').images
  np.testing.assert_array_equal(images[0, ..., 0], values >> (16 - num_bits))
  assert images.max() > 0.9 * (2**num_bits - 1)  # not clamped to one value
  rgb = data.load_split(_cfg(tmp_path, channels=3), 'test').images[0]
  np.testing.assert_array_equal(rgb, np.repeat((values >> 8)[..., None], 3, axis=-1))


def test_opaque_alpha_is_dropped(tmp_path):
  rgba = np.random.default_rng(0).integers(0, 256, (4, 4, 4), dtype=np.uint8)
  rgba[..., 3] = 255
  _save(tmp_path / 'train' / 'a.png', Image.fromarray(rgba, 'RGBA'))
  _save(tmp_path / 'test' / 'a.png', Image.fromarray(rgba[..., :3].copy(), 'RGB'))
  cfg = _cfg(tmp_path, channels=3)
  np.testing.assert_array_equal(data.load_split(cfg, 'train').images,
                                data.load_split(cfg, 'test').images)


@pytest.mark.parametrize('mode', ['RGBA', 'LA', 'P'])
def test_transparent_pixels_are_refused_in_one_line(mode, tmp_path):
  rgb = np.full((4, 4, 3), 200, np.uint8)
  if mode == 'P':  # colour 1 of the palette is transparent, and used at (0, 0)
    indices = np.zeros((4, 4), np.uint8)
    indices[0, 0] = 1
    image = Image.fromarray(indices, 'P')
    image.putpalette([200, 200, 200, 0, 0, 0] + [0] * 762)
    path = tmp_path / 'train' / 'a.png'
    path.parent.mkdir(parents=True)
    image.save(path, transparency=1)
  else:
    alpha = np.full((4, 4, 1), 255, np.uint8)
    alpha[0, 0] = 0
    bands = rgb if mode == 'RGBA' else rgb[..., :1]
    _save(tmp_path / 'train' / 'a.png', Image.fromarray(np.concatenate([bands, alpha], -1), mode))
  _save(tmp_path / 'test' / 'b.png', Image.fromarray(rgb, 'RGB'))
  with pytest.raises(UserError) as e:
    data.load_split(_cfg(tmp_path, channels=3), 'train')
  message = str(e.value)
  assert 'a.png: has transparent pixels' in message and 'flatten' in message, message
  assert '\n' not in message


def test_too_few_images_for_the_test_split_name_the_cause(tmp_path):
  for i in range(5):
    _save(tmp_path / f'{i}.png', Image.fromarray(np.full((4, 4), i, np.uint8)))
  cfg = _cfg(tmp_path)
  assert len(data.load_split(cfg, 'train').images) == 5
  with pytest.raises(UserError) as e:
    data.load_split(cfg, 'test')
  message = str(e.value)
  assert f'{tmp_path} holds 5 image(s) and no train/ and test/ subfolders' in message
  assert 'every 10th image is a test image' in message and 'point --config' not in message


def test_images_through_links_load_and_a_dangling_one_is_named(tmp_path):
  store = tmp_path / 'store'
  for split in ('train', 'test'):
    _save(store / f'{split}.png', Image.fromarray(np.full((4, 4), 9, np.uint8)))
    (tmp_path / 'farm' / split).mkdir(parents=True)
    os.symlink(store / f'{split}.png', tmp_path / 'farm' / split / 'x.png')
  cfg = _cfg(tmp_path / 'farm')
  assert (data.load_split(cfg, 'test').images == 9).all()
  os.remove(store / 'train.png')  # the file a link points at is gone
  with pytest.raises(UserError, match=r'x.png: cannot read image .*remove or replace'):
    data.load_split(cfg, 'train')
