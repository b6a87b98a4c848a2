"""Eval mode `summary`: parameter counts and shapes without allocating the model.

Everything is derived with `jax.eval_shape` of `eiw_jax.init`, so it runs for the
paper's 130M-parameter configuration on any machine (ctx.variables may be None).
Table 4 of the paper compares EIW-Flow (130.92M) with the vanilla multi-scale
flow (130.65M); `params_vanilla` is the same model with the Shuffle off.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from eiw_jax import api


def abstract_variables(model, batch_size: int = 1):
  """The variables `eiw_jax.init` would return, as ShapeDtypeStructs (nothing allocated)."""
  images = jax.ShapeDtypeStruct((batch_size, *model.image_shape), jnp.uint8)
  return jax.eval_shape(lambda key, x: api.init(model, key, x), jax.random.key(0), images)


def count_leaves(tree) -> int:
  """Total number of elements of the arrays (or ShapeDtypeStructs) in a pytree."""
  return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree)))


def vanilla_of(model):
  """The same model without the EIW Shuffle (the paper's vanilla baseline)."""
  return model.clone(flow=model.flow.clone(shuffle=False))


def param_counts(model) -> dict:
  """Parameter counts ('params' collection only) of the EIW model and its vanilla twin."""
  eiw = abstract_variables(model)['params']
  vanilla = abstract_variables(vanilla_of(model))['params']
  return dict(params_eiw=count_leaves(eiw), params_vanilla=count_leaves(vanilla),
              params_dequantizer=count_leaves(eiw.get('dequantizer', {})))


def run(ctx) -> dict:
  model = ctx.model
  abstract = abstract_variables(model)
  shapes = api.latent_shapes(model, abstract, 1)
  return dict(**param_counts(model),
              latent_shapes=[list(s[1:]) for s in shapes],
              image_shape=list(model.image_shape))
