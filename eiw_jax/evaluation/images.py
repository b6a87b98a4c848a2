"""Image helpers for the evaluation figures (paper §7-8: sample grids, Fig. 7-12).

Everything here works on host numpy arrays and writes PNGs with PIL. Integer
images hold b-bit values in [0, 2^b) and are scaled to 8 bits for display;
1-channel images are written as grayscale.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
from PIL import Image


def to_uint8(images, num_bits: int) -> np.ndarray:
  """b-bit integer images [..., C] -> uint8 (value * 255 / (2^b - 1), rounded)."""
  x = np.asarray(images).astype(np.float64)
  levels = 2**num_bits - 1
  return np.clip(np.round(x * 255.0 / levels), 0, 255).astype(np.uint8)


def normalize_maps(maps) -> np.ndarray:
  """Real-valued maps [..., H, W] -> uint8, each map min-max scaled on its own (Fig. 12)."""
  m = np.asarray(maps, np.float64)
  lo = m.min(axis=(-2, -1), keepdims=True)
  hi = m.max(axis=(-2, -1), keepdims=True)
  scaled = (m - lo) / np.where(hi > lo, hi - lo, 1.0)
  return np.round(scaled * 255.0).astype(np.uint8)


def tile(images: np.ndarray, rows: int, cols: int, pad: int = 1) -> np.ndarray:
  """uint8 [N, H, W, C] (N <= rows*cols) -> one [rows*(H+pad)-pad, cols*(W+pad)-pad, C] canvas.

  Cells are filled row by row; empty cells and the padding stay black.
  """
  images = np.asarray(images)
  n, h, w, c = images.shape
  if n > rows * cols:
    raise ValueError(f'{n} images do not fit a {rows}x{cols} grid')
  canvas = np.zeros((rows * (h + pad) - pad, cols * (w + pad) - pad, c), np.uint8)
  for i in range(n):
    r, q = divmod(i, cols)
    canvas[r * (h + pad):r * (h + pad) + h, q * (w + pad):q * (w + pad) + w] = images[i]
  return canvas


def grid_shape(n: int) -> tuple:
  """(rows, cols) of a square-ish grid for n images: cols = ceil(sqrt(n))."""
  cols = max(1, math.ceil(math.sqrt(n)))
  return max(1, math.ceil(n / cols)), cols


def save_uint8(canvas: np.ndarray, path: str) -> str:
  """Writes a uint8 [H, W, C] (C = 1 or 3) or [H, W] canvas as a PNG; returns path."""
  canvas = np.asarray(canvas, np.uint8)
  if canvas.ndim == 3 and canvas.shape[-1] == 1:
    canvas = canvas[..., 0]
  if canvas.ndim == 3 and canvas.shape[-1] not in (3, 4):
    raise ValueError(f'cannot write {canvas.shape[-1]}-channel images as PNG')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(canvas).save(path)
  return path


def save_grid(images, path: str, num_bits: int, cols: int = None) -> str:
  """Tiles b-bit integer images [N, H, W, C] into a grid PNG (square-ish unless cols given)."""
  images = to_uint8(images, num_bits)
  if cols is None:
    rows, cols = grid_shape(len(images))
  else:
    rows = max(1, math.ceil(len(images) / cols))
  return save_uint8(tile(images, rows, cols), path)


def save_rows(rows: Sequence[np.ndarray], path: str, num_bits: int) -> str:
  """One grid row per entry of `rows` (each b-bit [n_i, H, W, C]); short rows are padded."""
  cols = max(len(r) for r in rows)
  cells = []
  for r in rows:
    r = np.asarray(r)
    blank = np.zeros((cols - len(r), *r.shape[1:]), r.dtype)
    cells.append(np.concatenate([r, blank], axis=0))
  return save_grid(np.concatenate(cells, axis=0), path, num_bits, cols=cols)
