"""Scale bodies behind one interface, chosen by `model.backbone`.

A backbone module provides:

    model_defaults() -> dict     the model keys it sets (model_config(backbone=...))
    check(m)                     its keys' values, UserError on a bad one
    body(m, dtype)               `make(k, name)` -> scale k's body, a bijector on
                                 [B, H, W, C] that may add channels
    dequantizer(m, dtype)        optional: its own variational dequantizer

`m` is config.model, `dtype` the conditioners' compute dtype (None: float32). The
multi-scale assembly around the bodies (squeeze, Shuffle, split) is flow.py's.
This package belongs to the model library: it imports nothing of training.
"""
from __future__ import annotations

from eiw_jax.backbones import denseflow, ffjord, glow

BACKBONES = {'glow': glow, 'denseflow': denseflow, 'ffjord': ffjord}

__all__ = ['BACKBONES', 'denseflow', 'ffjord', 'glow']
