"""eiw_jax: EIW-Flow (Entropy-Informed Weighting Channel Normalizing Flow) in JAX/Flax.

`import eiw_jax` loads the model library only (the functional API of api.py, the
config -> model builder, the flows and the Shuffle): no optax, no orbax, nothing
of training, and no process-wide settings. `eiw_jax.load_run` imports the
training runtime (eiw_jax.train) when it is first used.

Layers, lowest first; a package imports only from the layers below it:

    errors, checks, nets, noise, losses, bijectors/, shuffle/, backbones/, flow,
    dequant, model, builder, api          the model library
    data/                                  datasets and batches (no model, no training)
    evaluation/                            eval.py's modes (model library + data)
    train/                                 the training runtime: the run config (its schema,
                                           checks and old-config upgrade), the optimiser,
                                           the loop, checkpoints (the one place that
                                           knows orbax)
    cli, cpu_lapack                        the scripts' start-up
"""
from eiw_jax.api import (decode, encode, forward, init, inverse, latent_shapes, log_prob, loss,
                         sample, sample_latents, shuffle_info, train_loss)
from eiw_jax.builder import build, model_config, validate
from eiw_jax.checks import check_images
from eiw_jax.errors import UserError
from eiw_jax.flow import MultiScaleFlow, flatten_latents, unflatten_latents
from eiw_jax.losses import bits_per_dim, objective
from eiw_jax.model import EIWFlow, to_continuous, to_discrete
from eiw_jax.shuffle import Shuffle

__all__ = [
    'EIWFlow', 'MultiScaleFlow', 'Shuffle', 'UserError', 'bits_per_dim', 'build',
    'check_images', 'decode', 'encode', 'flatten_latents', 'forward', 'init', 'inverse',
    'latent_shapes', 'load_run', 'log_prob', 'loss', 'model_config', 'objective', 'sample',
    'sample_latents', 'shuffle_info', 'to_continuous', 'to_discrete', 'train_loss',
    'unflatten_latents', 'validate',
]


def __getattr__(name):
  if name == 'load_run':  # the training runtime (orbax) only when a run is opened
    from eiw_jax.train.runs import load_run  # pylint: disable=g-import-not-at-top
    return load_run
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
