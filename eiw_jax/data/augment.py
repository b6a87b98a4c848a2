"""Training-set augmentation on the host, as DenseFlow's code applies it per dataset.

`config.data.augment`:
  'none'            no augmentation (MNIST-like data, where a flipped digit is
                    another image);
  'flip'            horizontal flip with probability 1/2 (DenseFlow on CelebA);
  'flip_translate'  flip, then a translation by a whole number of pixels along
                    each axis with edge replication (DenseFlow's 'eta' on CIFAR-10
                    and ImageNet32/64).

DenseFlow's translation (torchvision): pad p = ceil(0.04 S) pixels by edge
replication, translate by round(U(-t, t)) pixels per axis with t = 0.04 (S + 2p),
centre-crop back to S. |shift| <= p, so this is the same as reading pixel
(i - dy, j - dx) with the indices clipped to the image, which is what is done
here: S = 32 shifts by -1, 0 or 1 (probabilities 0.33, 0.35, 0.33), S = 64 by up
to 3 pixels.

Randomness: the draws for global batch `step` come from
numpy's default_rng([seed, 0xA06, step]) for all rows of the global batch, and
row r of it gets draw r; so an example's transform depends only on (seed, step,
its row in the global batch), not on the number of hosts, and a resumed run sees
the same augmented batches as an uninterrupted one.
"""
from __future__ import annotations

import math

import numpy as np

from eiw_jax.errors import UserError

AUGMENTATIONS = ('none', 'flip', 'flip_translate')
_TAG = 0xA06  # separates the augmentation's stream from the epoch permutations'
TRANSLATE_FRACTION = 0.04


def check(kind: str) -> None:
  if kind not in AUGMENTATIONS:
    raise UserError(f'data.augment must be one of {", ".join(AUGMENTATIONS)}, got {kind!r}; '
                    'set --config.data.augment=none')


def draws(kind: str, size: int, batch_size: int, seed: int, step: int):
  """(flip [B] bool, shift [B, 2] int (dy, dx)) for every row of global batch `step`."""
  rng = np.random.default_rng([seed % 2**63, _TAG, step])
  flip = rng.random(batch_size) < 0.5
  shift = np.zeros((batch_size, 2), np.int64)
  if kind == 'flip_translate':
    pad = math.ceil(TRANSLATE_FRACTION * size)
    t = TRANSLATE_FRACTION * (size + 2 * pad)
    shift = np.rint(rng.uniform(-t, t, (batch_size, 2))).astype(np.int64)
  return flip, shift


def apply(images: np.ndarray, flip: np.ndarray, shift: np.ndarray) -> np.ndarray:
  """Flips rows where `flip`, then translates them by `shift` (edge replication).

  images uint8 [B, H, W, C]; out[b, i, j] = in[b, clip(i - dy), f(clip(j - dx))]
  with f(j) = W - 1 - j for flipped rows.
  """
  b, h, w, _ = images.shape
  rows = np.clip(np.arange(h)[None, :] - shift[:, :1], 0, h - 1)      # [B, H]
  cols = np.clip(np.arange(w)[None, :] - shift[:, 1:], 0, w - 1)      # [B, W]
  cols = np.where(flip[:, None], w - 1 - cols, cols)
  return images[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def augment(images: np.ndarray, kind: str, *, seed: int, step: int, rows: slice,
            global_batch_size: int) -> np.ndarray:
  """Augments this host's `rows` of global batch `step` (see module doc)."""
  if kind == 'none':
    return images
  flip, shift = draws(kind, images.shape[1], global_batch_size, seed, step)
  return apply(images, flip[rows][:len(images)], shift[rows][:len(images)])
