"""The functional API: every function takes the model, its variables and RNG keys
explicitly, holds no state, and works under `jax.jit`, `jax.grad` and `jax.vmap`.

    model = eiw_jax.build(config)                  # an EIWFlow (a flax module)
    variables = eiw_jax.init(model, key, images)   # data-dependent init
    loss, metrics = eiw_jax.loss(model, variables, images, key)
    samples = eiw_jax.sample(model, variables, key, 16, temperature=0.7)

`images` are integer arrays [B, H, W, C] in [0, 2^b). `variables` is the dict
flax returns: {'params': ..., 'consts': ...}; pass all of it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from eiw_jax.losses import objective
from eiw_jax.model import EIWFlow, rngs_for, to_discrete
from eiw_jax.shuffle import channel_order, factored_mask, transition_scores
from eiw_jax.shuffle.base import FIT_COLLECTION


def init(model: EIWFlow, rng, images):
  """Data-dependent initialisation on a batch of integer images. Returns variables."""
  params_rng, call_rng = jax.random.split(rng)
  variables = jax.jit(model.init)({'params': params_rng, **rngs_for(call_rng)}, images)
  return {k: v for k, v in variables.items() if k != FIT_COLLECTION}


def log_prob(model: EIWFlow, variables, images, rng):
  """Lower bound on log P(x) per image, in nats: [B]."""
  return model.apply(variables, images, rngs=rngs_for(rng))[0]


def loss(model: EIWFlow, variables, images, rng, kl_weight=None):
  """Eq. 12 on a batch: (scalar loss in nats, metrics dict with bpd, loss_bpd, kl).

  The loss also holds the Shuffle reading's own fitting loss (metric
  `shuffle_fit`; 'likelihood' and 'oracle' only), which trains no flow parameter.
  """
  (lp, kls), sown = model.apply(variables, images, rngs=rngs_for(rng), mutable=[FIT_COLLECTION])
  fit = sum((jnp.sum(x) for x in jax.tree.leaves(sown)), jnp.zeros((), jnp.float32))
  weight = model.kl_weight if kl_weight is None else kl_weight
  return objective(lp, kls, model.num_dims, weight, model.kl_units, fit)


def shuffle_state(model: EIWFlow, variables) -> list:
  """What each transition's Shuffle does now, from the variables alone.

  Returns one dict per transition k = 1..K-1 ([] for the vanilla flow):
    perm: [4C] int32, the permutation the shuffler applies (û = u[..., perm]; the
      first 2C go on, the last 2C are factored out);
    factored: [4C] bool, True for the channels of u_k that are factored out;
    q: [4C] the solver's live Q (sums to 1), for the readings with a solver, else None.
  """
  flow = model.flow
  params = variables['params'].get('flow', {})
  consts = variables.get('consts', {}).get('flow', {})
  channels = [2 * shape[-1] for shape in latent_shapes(model, variables)[:-1]]  # 4C = 2 |z_k|
  used = transition_scores(flow, params, channels, consts)
  live = transition_scores(flow, params, channels)
  out = []
  for k, scores in enumerate(used):
    perm = channel_order(scores)
    q = jax.nn.softmax(live[k]) if flow.shuffle_mode in ('kl', 'likelihood') else None
    out.append(dict(perm=perm, factored=factored_mask(perm), q=q))
  return out


def forward(model: EIWFlow, variables, y, rng=None):
  """Continuous y [B, H, W, C] -> (latents, logdet [B], KL [K-1]).

  `rng` feeds the noise of augmented flows (DenseFlow's cross-unit coupling);
  a fixed key is used when it is None.
  """
  rng = jax.random.key(0) if rng is None else rng
  return model.apply(variables, y, method=EIWFlow.encode, rngs=rngs_for(rng))


def inverse(model: EIWFlow, variables, latents):
  """Latents -> (continuous y, logdet [B])."""
  return model.apply(variables, latents, method=EIWFlow.decode)


def encode(model: EIWFlow, variables, y, rng=None):
  """Continuous y -> per-scale latents [z_1..z_K], each ~N(0, I) under the model."""
  return forward(model, variables, y, rng)[0]


def decode(model: EIWFlow, variables, latents):
  """Per-scale latents -> continuous y."""
  return inverse(model, variables, latents)[0]


def latent_shapes(model: EIWFlow, variables, batch_size: int = 1):
  """Shapes of the per-scale latents for `batch_size` images (no computation)."""
  y = jax.ShapeDtypeStruct((batch_size, *model.image_shape), jnp.float32)
  out = jax.eval_shape(lambda v, y: forward(model, v, y, jax.random.key(0))[0], variables, y)
  return [z.shape for z in out]


def sample_latents(model: EIWFlow, variables, rng, n: int, temperature: float = 1.0):
  """z ~ N(0, T^2 I) at every scale."""
  shapes = latent_shapes(model, variables, n)
  keys = jax.random.split(rng, len(shapes))
  return [temperature * jax.random.normal(k, s) for k, s in zip(keys, shapes)]


def sample(model: EIWFlow, variables, rng, n: int, temperature: float = 1.0):
  """n integer images [n, H, W, C] in [0, 2^b) from the model at temperature T."""
  y = decode(model, variables, sample_latents(model, variables, rng, n, temperature))
  return to_discrete(y, model.num_bits)
