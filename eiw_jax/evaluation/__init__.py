"""Evaluation modes (eval.py --mode=<mode>). One file per mode, each exposing
`run(ctx: EvalContext) -> dict`; the dict is written to <workdir>/eval/<mode>.json
and any PNGs go beside it (ctx.out_dir). The modes' options are the `config.eval`
keys (`defaults`). This package uses the model library and data/, nothing of
training.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Any, Callable, Optional

from eiw_jax.data import Split

MODES = ('bpd', 'samples', 'reconstruct', 'interpolate', 'manipulate', 'entropy', 'channels',
         'speed', 'fid', 'summary')


def defaults() -> dict:
  """The `config.eval` keys: the options of the modes (docs/USAGE.md lists them)."""
  return dict(
      batch_size=256, num_examples=0, iw_samples=0,
      temperatures=[0.0, 0.5, 0.7, 0.8, 0.9, 1.0], num_samples=64, num_pairs=4,
      interpolation_steps=8, interpolation_temperature=0.8,
      manipulate_positive=1, manipulate_negative=0,
      manipulate_alphas=[-2.0, -1.0, 0.0, 1.0, 2.0], entropy_examples=1000,
      channels_top=10, speed_batch_size=0, speed_iters=5, fid_num_samples=10000)


@dataclasses.dataclass
class EvalContext:
  """Everything a mode needs. Splits load lazily (summary and speed need no data)."""
  model: Any                      # eiw_jax.EIWFlow
  variables: Optional[dict]       # {'params', 'consts'}; None for modes that need no weights
  config: Any                     # the run's ml_collections config (config.eval holds mode options)
  out_dir: str                    # <workdir>/eval
  rng: Any                        # a jax PRNG key
  load_split: Callable[[str], Split] = None  # 'train' | 'test' -> Split (cached)

  def __post_init__(self):
    """config.eval completed with the defaults of the options it leaves out."""
    import ml_collections  # pylint: disable=g-import-not-at-top
    if self.config is not None:
      config = ml_collections.ConfigDict(self.config.to_dict())
      config.eval = {**defaults(), **dict(self.config.get('eval') or {})}
      self.config = config

  @functools.cached_property
  def test(self) -> Split:
    return self.load_split('test')

  @functools.cached_property
  def train(self) -> Split:
    return self.load_split('train')


def get_mode(name: str) -> Callable[[EvalContext], dict]:
  if name not in MODES:
    raise ValueError(f'unknown eval mode {name!r}; choose one of {", ".join(MODES)}')
  return importlib.import_module(f'eiw_jax.evaluation.{name}').run
