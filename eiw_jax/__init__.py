"""eiw_jax: EIW-Flow (Entropy-Informed Weighting Channel Normalizing Flow) in JAX/Flax.

The functional API (see api.py) is re-exported here, with `load_run` (runs.py).
"""
from eiw_jax import cpu_lapack

cpu_lapack.load_single_threaded()  # before anything loads scipy's LAPACK (see cpu_lapack)

# pylint: disable=g-import-not-at-top,wrong-import-position
from eiw_jax.api import (decode, encode, forward, init, inverse, latent_shapes, log_prob, loss,
                         loss_with_batch_stats, sample, sample_latents, shuffle_info)
from eiw_jax.builder import build, model_config, validate
from eiw_jax.checks import check_images
from eiw_jax.errors import UserError
from eiw_jax.flow import MultiScaleFlow, flatten_latents, unflatten_latents
from eiw_jax.losses import bits_per_dim, objective
from eiw_jax.model import EIWFlow, to_continuous, to_discrete
from eiw_jax.runs import load_run
from eiw_jax.shuffle import Shuffle

__all__ = [
    'EIWFlow', 'MultiScaleFlow', 'Shuffle', 'UserError', 'bits_per_dim', 'build',
    'check_images', 'decode', 'encode', 'flatten_latents', 'forward', 'init', 'inverse',
    'latent_shapes', 'load_run', 'log_prob', 'loss', 'loss_with_batch_stats', 'model_config',
    'objective', 'sample', 'sample_latents', 'shuffle_info', 'to_continuous', 'to_discrete',
    'unflatten_latents', 'validate',
]

