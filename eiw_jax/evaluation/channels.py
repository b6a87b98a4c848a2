"""Eval mode `channels`: maps of x_k and z_k before/after the Shuffle (paper §8.2, Fig. 12).

For one test image (the first) and each transition k, u_k's channels are ranked
by the Shuffle's weights (the solver's Q; for 'random' and 'oracle' the softmax
of their scores). Before the Shuffle x_k / z_k are u_k[..., :2C] /
u_k[..., 2C:]; after it they are the halves of û_k = u_k[..., perm]. For each of
the four tensors the l = eval.channels_top channels with the highest Q and the l
with the lowest Q are drawn, each map min-max normalised on its own. PNG
`channels_k{k}.png` has eight rows:
    before x_k high-Q, before x_k low-Q, before z_k high-Q, before z_k low-Q,
    after  x_k high-Q, after  x_k low-Q, after  z_k high-Q, after  z_k low-Q.
The vanilla model has no solver Q to rank channels by, so it is skipped.
"""
from __future__ import annotations

import os

import jax
import numpy as np

from eiw_jax.evaluation import common
from eiw_jax.evaluation.images import normalize_maps, save_rows
from eiw_jax.evaluation.transitions import channel_orders, transition_tensors

ROWS = ('before_x_high', 'before_x_low', 'before_z_high', 'before_z_low',
        'after_x_high', 'after_x_low', 'after_z_high', 'after_z_low')


def _ranked(channels: np.ndarray, q: np.ndarray, top: int):
  """Channel indices (into u_k) of the `top` highest- and lowest-Q among `channels`
  (Q's stable descending order: ties keep their order in u_k)."""
  by_q = channels[np.argsort(-q[channels], kind='stable')]
  return by_q[:top], by_q[::-1][:top]


def run(ctx) -> dict:
  model, variables = ctx.model, ctx.variables
  if not model.flow.shuffle:
    return dict(skipped='vanilla model: no Shuffle, so no channel weights to rank channels by')
  if model.flow.num_scales < 2:
    return dict(skipped='a single-scale flow has no transitions')
  image = np.asarray(ctx.test.images[:1])
  us = [np.asarray(u)[0] for u in
        transition_tensors(model, variables, image, jax.random.fold_in(ctx.rng, 6))]
  orders = channel_orders(model, variables, [u.shape[-1] for u in us])
  top_l = int(common.option(ctx, 'channels_top'))
  files, transitions = [], []
  for k, (u, (q, perm)) in enumerate(zip(us, orders)):
    c4 = u.shape[-1]
    half, top = c4 // 2, max(1, min(top_l, c4 // 2))
    halves = dict(before_x=np.arange(half), before_z=np.arange(half, c4),
                  after_x=perm[:half], after_z=perm[half:])
    chosen = {}
    for name, chans in halves.items():
      chosen[f'{name}_high'], chosen[f'{name}_low'] = _ranked(chans, q, top)
    maps = [normalize_maps(np.moveaxis(u[..., chosen[r]], -1, 0))[..., None] for r in ROWS]
    fname = f'channels_k{k + 1}.png'
    save_rows(maps, os.path.join(ctx.out_dir, fname), 8)
    files.append(fname)
    transitions.append(dict(
        k=k + 1, num_channels=int(c4), shown=int(top),
        q_max=float(q.max()), q_min=float(q.min()),
        channels={r: [int(c) for c in chosen[r]] for r in ROWS},
        q={r: [float(q[c]) for c in chosen[r]] for r in ROWS}))
  return dict(images=files, transitions=transitions, rows=list(ROWS))
