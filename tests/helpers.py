"""Shared test utilities: random non-identity parameters, brute-force log-dets, and
what a compiled CPU program calls."""
import jax
import jax.numpy as jnp
import numpy as np


def perturb(variables, key, scale=0.2):
  """Adds Gaussian noise to every float parameter (not to 'consts'): non-identity layers."""
  if 'params' not in variables:
    return variables
  params = variables['params']
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  leaves = [l + scale * jax.random.normal(k, l.shape, l.dtype) for l, k in zip(leaves, keys)]
  return {**variables, 'params': jax.tree.unflatten(treedef, leaves)}


def brute_force_logdet(fn, x):
  """log|det J| of fn at a single example x (batch axis 1), by autodiff on the flat input.

  Forward mode (jax.jacfwd), as distrax tests its bijectors: every layer must
  support it (reverse mode is what training exercises).
  """
  shape = x.shape

  def flat_fn(v):
    return fn(v.reshape(shape)).reshape(-1)

  jac = jax.jacfwd(flat_fn)(x.reshape(-1))
  assert jac.shape[0] == jac.shape[1], f'non-square Jacobian {jac.shape}'
  sign, logdet = np.linalg.slogdet(np.asarray(jac, np.float64))
  assert sign != 0
  return logdet


def commit_orders(model, variables):
  """The variables after a refresh of the shuffler's order from the live Q (as
  training does every model.shuffle_refresh_every steps), so that a perturbed
  solver really permutes."""
  from eiw_jax import shuffle  # pylint: disable=g-import-not-at-top
  consts = variables.get('consts', {})
  flow = shuffle.commit_live_orders(model.flow, variables['params']['flow'], consts.get('flow', {}))
  return {**variables, 'consts': {**consts, 'flow': flow}}


def ynn_fusions(compiled) -> int:
  """How many YNNPACK fusions a compiled CPU program calls."""
  return compiled.as_text().count('%ynn_fusion')
