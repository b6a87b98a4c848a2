"""The functional API: every function takes the model, its variables and RNG keys
explicitly, holds no state, and works under `jax.jit`, `jax.grad`, `jax.jacfwd`
and `jax.vmap`.

    model = eiw_jax.build(config)                  # an EIWFlow (a flax module)
    variables = eiw_jax.init(model, key, images)   # data-dependent init
    loss, metrics = eiw_jax.loss(model, variables, images, key)
    samples = eiw_jax.sample(model, variables, key, 16, temperature=0.7)

`images` are integer arrays [B, H, W, C] in [0, 2^b); continuous `y` (for
`forward`/`encode`) are floats in [-0.5, 0.5) (`to_continuous`). `variables` is
the dict flax returns: {'params': ..., 'consts': ...}; pass all of it. Inputs are
checked where they enter (eiw_jax/checks.py): shapes and dtypes when traced,
values when concrete.

Randomness: `rng` feeds the dequantisation noise (and DenseFlow's augmentation
noise). Image i of a batch draws from fold_in(key, i), so an image's log_prob
depends on the key and its index, not on the batch it sits in. `rng=None` means
a fixed key, jax.random.key(0).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from eiw_jax import checks
from eiw_jax.backbones.ffjord import NFE_COLLECTION, PENALTY_COLLECTION
from eiw_jax.losses import objective
from eiw_jax.model import EIWFlow, rngs_for, to_discrete
from eiw_jax.shuffle import factored_mask, transition_permutations, transition_scores
from eiw_jax.shuffle.base import FIT_COLLECTION
from eiw_jax.shuffle.nets import Guider


def _key(rng):
  return jax.random.key(0) if rng is None else rng


def init(model: EIWFlow, rng, images):
  """Data-dependent initialisation on a batch of integer images. Returns variables."""
  checks.check_images(model, images, 'init')
  params_rng, call_rng = jax.random.split(rng)
  variables = jax.jit(model.init)({'params': params_rng, **rngs_for(call_rng)}, images)
  return {k: v for k, v in variables.items() if k != FIT_COLLECTION}


def log_prob(model: EIWFlow, variables, images, rng=None):
  """Lower bound on log P(x) per integer image, in nats: [B]."""
  checks.check_images(model, images, 'log_prob')
  return model.apply(variables, images, rngs=rngs_for(_key(rng)))[0]


def loss(model: EIWFlow, variables, images, rng, kl_weight=None):
  """Eq. 12 on a batch: (scalar loss in nats, metrics dict with bpd, loss_bpd, kl).

  The loss also holds the Shuffle reading's own fitting loss (metric
  `shuffle_fit`; 'likelihood' and 'oracle' only), which trains no flow parameter.
  With the FFJORD backbone, metric `nfe` is the number of dynamics-net evaluations
  of the forward solves (all scales and blocks), and metric `ode_penalty` the
  kinetic / Jacobian regularisers (model.ffjord.*_weight > 0), added to the loss.
  """
  (value, metrics), _ = _objective(model, variables, images, rng, kl_weight, [])
  return value, metrics


def train_loss(model: EIWFlow, variables, images, rng, kl_weight=None):
  """`loss` in training mode: (loss, metrics, consts). The model's constants are
  updated as training updates them: a model that normalises with batch statistics
  (model.denseflow.norm='batch') uses this batch's and moves their running averages
  toward them, and the Shuffle counts the update and refreshes the order it uses
  every model.shuffle_refresh_every of them (eiw_jax/shuffle/base.py). Put `consts`
  back into the variables with the update of the parameters; `loss`, `log_prob` and
  `sample` then use them as they are."""
  (value, metrics), state = _objective(model, variables, images, rng, kl_weight, ['consts'])
  return value, metrics, state.get('consts', {})


def _objective(model, variables, images, rng, kl_weight, mutable):
  checks.check_images(model, images, 'loss')
  (lp, kls), state = model.apply(
      variables, images, rngs=rngs_for(rng),
      mutable=[*mutable, FIT_COLLECTION, NFE_COLLECTION, PENALTY_COLLECTION])
  sown = state.pop(FIT_COLLECTION, {})
  nfe = jax.tree.leaves(state.pop(NFE_COLLECTION, {}))
  penalties = jax.tree.leaves(state.pop(PENALTY_COLLECTION, {}))
  fit = sum((jnp.sum(x) for x in jax.tree.leaves(sown)), jnp.zeros((), jnp.float32))
  weight = model.kl_weight if kl_weight is None else kl_weight
  value, metrics = objective(lp, kls, model.num_dims, weight, model.kl_units, fit)
  if nfe:  # FFJORD backbone
    metrics = dict(metrics, nfe=sum(nfe).astype(jnp.float32))
  if penalties:
    penalty = sum(jnp.mean(p) for p in penalties)
    value, metrics = value + penalty, dict(metrics, ode_penalty=penalty)
  return (value, metrics), state


def shuffle_info(model: EIWFlow, variables, images=None, rng=None) -> list:
  """What each transition's Shuffle does: one dict per transition k = 1..K-1
  ([] for the vanilla flow).

  From the variables alone:
    perm: [4C] int32, the permutation the shuffler applies (û = u[..., perm]; the
      first 2C go on, the last 2C are factored out);
    factored: [4C] bool, True for the channels of u_k that are factored out;
    q: [number of units], the solver's live Q (sums to 1), for the readings with a
      solver, else None (a unit is a channel of u_k, or a map of four channels
      with model.shuffle_unit='map').
  Given integer `images` [B, H, W, C] (dequantised with `rng`), also:
    p: [B, number of units], the guider's P per image (rows sum to 1), for the
      readings with a guider, else None;
    kl: scalar, the transition's KL of Eq. 11 on this batch (before λ).
  """
  flow = model.flow
  params = variables['params'].get('flow', {})
  consts = variables.get('consts', {}).get('flow', {})
  channels = [2 * shape[-1] for shape in latent_shapes(model, variables)[:-1]]  # 4C = 2 |z_k|
  used = transition_permutations(flow, params, channels, consts)
  live = transition_scores(flow, params, channels)
  out = []
  for k, perm in enumerate(used):
    solver = flow.shuffle_settings.mode in ('kl', 'likelihood')
    q = jax.nn.softmax(live[k]) if solver else None
    out.append(dict(perm=perm, factored=factored_mask(perm), q=q))
  if images is not None and out:
    checks.check_images(model, images, 'shuffle_info')
    (_, kls), state = model.apply(
        variables, images, rngs=rngs_for(_key(rng)), mutable=['intermediates', FIT_COLLECTION],
        capture_intermediates=lambda module, method: isinstance(module, Guider))
    captured = state.get('intermediates', {}).get('flow', {})
    for k, info in enumerate(out):
      logits = captured.get(f'shuffle_{k}', {}).get('guider', {}).get('__call__')
      info.update(p=None if logits is None else jax.nn.softmax(logits[0], axis=-1), kl=kls[k])
  return out


def forward(model: EIWFlow, variables, y, rng=None):
  """Continuous y [B, H, W, C] -> (latents [z_1..z_K], logdet [B]): the flow's
  data-to-latent map and log|det dz/dy|, as every bijector's `forward`.

  `rng` feeds the noise of augmented flows (DenseFlow's cross-unit coupling).
  The Shuffle's KL is in `shuffle_info`.
  """
  checks.check_continuous(model, y, 'forward')
  latents, logdet, _ = model.apply(variables, y, method=EIWFlow.encode,
                                   rngs=rngs_for(_key(rng)))
  return latents, logdet


def inverse(model: EIWFlow, variables, latents):
  """Latents [z_1..z_K] -> (continuous y [B, H, W, C], log|det dy/dz| [B])."""
  checks.check_latents(model, latents, 'inverse')
  return model.apply(variables, list(latents), method=EIWFlow.decode)


def encode(model: EIWFlow, variables, y, rng=None):
  """Continuous y -> per-scale latents [z_1..z_K], each ~N(0, I) under the model."""
  return forward(model, variables, y, rng)[0]


def decode(model: EIWFlow, variables, latents):
  """Per-scale latents -> continuous y."""
  return inverse(model, variables, latents)[0]


def latent_shapes(model: EIWFlow, variables, batch_size: int = 1):
  """Shapes [B, H_k, W_k, C_k] of the per-scale latents for `batch_size` images
  (no computation; `unflatten_latents` takes them as they are)."""
  y = jax.ShapeDtypeStruct((batch_size, *model.image_shape), jnp.float32)
  out = jax.eval_shape(lambda v, y: forward(model, v, y)[0], variables, y)
  return [z.shape for z in out]


def sample_latents(model: EIWFlow, variables, rng, n: int, temperature: float = 1.0):
  """z ~ N(0, T^2 I) at every scale."""
  checks.check_sampling(n, temperature, 'sample_latents')
  shapes = latent_shapes(model, variables, n)
  keys = jax.random.split(rng, len(shapes))
  return [temperature * jax.random.normal(k, s) for k, s in zip(keys, shapes)]


def sample(model: EIWFlow, variables, rng, n: int, temperature: float = 1.0):
  """n integer images [n, H, W, C] in [0, 2^b) from the model at temperature T >= 0."""
  checks.check_sampling(n, temperature, 'sample')
  y = decode(model, variables, sample_latents(model, variables, rng, n, temperature))
  return to_discrete(y, model.num_bits)

