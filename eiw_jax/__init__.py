"""eiw_jax: EIW-Flow (Entropy-Informed Weighting Channel Normalizing Flow) in JAX/Flax.

`import eiw_jax` loads the model library only (the functional API of api.py, the
config -> model builder, the flows and the Shuffle): no optax, no orbax, nothing
of training, and no process-wide settings. `eiw_jax.optimizer` (optax) and
`eiw_jax.load_run` (orbax) import the training runtime (eiw_jax.train) when they
are first used. docs/API.md is the reference of every name in `__all__`.

Layers, lowest first; a package imports only from the layers below it:

    errors, checked, checks, nets, noise, losses, bijectors/, shuffle/, backbones/,
    flow, dequant, model, builder, api, introspect, distribution   the model library
    data/                                  datasets and batches (no model, no training)
    evaluation/                            eval.py's modes (model library + data)
    train/                                 the training runtime: the run config (its schema,
                                           checks and old-config upgrade), the optimiser,
                                           the loop, checkpoints (the one place that
                                           knows orbax)
    cli, cpu_lapack                        the scripts' start-up
"""
from eiw_jax.api import (decode, encode, forward, init, inverse, latent_shapes, log_prob,
                         log_prob_continuous, loss, sample, sample_latents, train_loss)
from eiw_jax.builder import build, model_config, validate
from eiw_jax.checked import checked
from eiw_jax.checks import check_images
from eiw_jax.distribution import Distribution, FlowBijector
from eiw_jax.errors import UserError
from eiw_jax.flow import MultiScaleFlow, flatten_latents, unflatten_latents
from eiw_jax.introspect import shuffle_info
from eiw_jax.losses import bits_per_dim, objective
from eiw_jax.model import EIWFlow, to_continuous, to_discrete
from eiw_jax.shuffle import Shuffle

__version__ = '0.1.0'

__all__ = [
    'Distribution', 'EIWFlow', 'FlowBijector', 'MultiScaleFlow', 'Shuffle', 'UserError',
    'bits_per_dim', 'build', 'check_images', 'checked', 'decode', 'encode', 'flatten_latents',
    'forward', 'init', 'inverse', 'latent_shapes', 'load_run', 'log_prob', 'log_prob_continuous',
    'loss', 'model_config', 'objective', 'optimizer', 'sample', 'sample_latents', 'shuffle_info',
    'to_continuous', 'to_discrete', 'train_loss', 'unflatten_latents', 'validate',
]

# Names whose modules need the training runtime: imported on first use.
_LAZY = {'load_run': 'eiw_jax.train.runs', 'optimizer': 'eiw_jax.train.optimizer'}


def __getattr__(name):
  if name in _LAZY:
    import importlib  # pylint: disable=g-import-not-at-top
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(set(globals()) | set(_LAZY))
