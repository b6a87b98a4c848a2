"""Invertible layers. The contract (direction, logdet, init) is in `base`."""
from eiw_jax.bijectors.actnorm import ActNorm
from eiw_jax.bijectors.base import Bijector, Chain, compose, sum_event, zero_logdet
from eiw_jax.bijectors.coupling import Coupling
from eiw_jax.bijectors.invconv import InvConv1x1
from eiw_jax.bijectors.permute import Permute, fixed_permutation
from eiw_jax.bijectors.squeeze import Squeeze, squeeze, unsqueeze

__all__ = [
    'ActNorm', 'Bijector', 'Chain', 'Coupling', 'compose', 'InvConv1x1', 'Permute', 'Squeeze',
    'fixed_permutation', 'squeeze', 'sum_event', 'unsqueeze', 'zero_logdet',
]
