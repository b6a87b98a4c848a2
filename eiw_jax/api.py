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
values when concrete or in the checked mode (`eiw_jax.checked`).

Randomness: `rng` feeds the dequantisation noise (and DenseFlow's augmentation
noise). Image i of a batch draws from fold_in(key, i), so an image's log_prob
depends on the key and its index, not on the batch it sits in. `rng=None` means
a fixed key, jax.random.key(0).
"""
from __future__ import annotations

import functools
import re
import warnings
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from eiw_jax import checks
from eiw_jax.backbones.ffjord import NFE_COLLECTION, PENALTY_COLLECTION
from eiw_jax.errors import UserError
from eiw_jax.losses import objective
from eiw_jax.model import EIWFlow, rngs_for, to_discrete
from eiw_jax.shuffle.base import FIT_COLLECTION

Variables = Mapping[str, Any]  # {'params': ..., 'consts': ...}, as init returns it
Latents = List[jax.Array]      # [z_1, ..., z_K], each [B, H_k, W_k, C_k]


def apply(model: EIWFlow, variables: Variables, where: str, *args, **kwargs):
  """model.apply with the variables checked, flax's scope errors as one-line UserErrors."""
  checks.check_variables(variables, where)
  try:
    return model.apply(variables, *args, **kwargs)
  except flax.errors.ScopeCollectionNotFound as e:
    found = re.search(r'collection "(\w+)"', str(e))
    name = found.group(1) if found else 'consts'
    raise UserError(f'{where}: the variables lack the {name!r} collection this model needs; pass '
                    "the whole dict init returned, e.g. {**variables, 'params': params}") from None
  except (flax.errors.ScopeParamNotFoundError, flax.errors.ScopeParamShapeError,
          flax.errors.ScopeVariableNotFoundError) as e:
    found = re.search(r'"([^"]+)" in "([^"]+)"', str(e))
    what = f' ({found.group(2)}/{found.group(1)})' if found else ''
    raise UserError(f'{where}: the variables do not fit this model{what}; pass the variables '
                    'that init (or load_run) gave for this model') from None


@functools.lru_cache(maxsize=16)
def _init_program(model: EIWFlow, continuous: bool, top_level: bool):
  """One jitted init per model: it compiles once per input shape and dtype. It runs
  once, so only its compile time matters: called at the top level on CPU, it compiles
  at LLVM's optimisation level 1, as train.py's init (eiw_jax/train/xla_options.py,
  "Programs that run once"). Inside another jit the caller's options apply."""
  method = EIWFlow.init_continuous if continuous else None
  cpu = top_level and jax.default_backend() == 'cpu'
  options = {'xla_backend_optimization_level': 1} if cpu else None
  return jax.jit(lambda rngs, x: model.init(rngs, x, method=method), compiler_options=options)


def _run_init(model, continuous, rngs, images):
  if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((rngs, images))):
    return _init_program(model, continuous, False)(rngs, images)  # traced by the caller
  try:
    return _init_program(model, continuous, True)(rngs, images)
  except ValueError as e:  # concrete inputs, but inside a caller's jit after all
    if 'compiler_options' not in str(e):
      raise
    return _init_program(model, continuous, False)(rngs, images)


def init(model: EIWFlow, rng: jax.Array, images: jax.Array) -> dict:
  """Data-dependent initialisation on a batch. Returns variables.

  `images` are integer images [B, H, W, C], or continuous y (floats, e.g. a
  dequantised batch or the data of a flow used as a prior over continuous
  values). A batch with a constant channel is initialised but warned about:
  ActNorm scales by the batch's spread.
  """
  rng = checks.check_rng(rng, 'init')
  continuous = hasattr(images, 'dtype') and jnp.issubdtype(images.dtype, jnp.floating)
  if continuous:
    checks.check_continuous(model, images, 'init', bounded=False)
  else:
    checks.check_images(model, images, 'init')
  if checks.is_concrete(images):
    values = np.asarray(images)
    flat = values.reshape(-1, values.shape[-1])
    if np.any(flat.min(0) == flat.max(0)):
      warnings.warn('init: a channel of the batch is constant, so the data-dependent init '
                    '(ActNorm) divides by a spread of ~0 and log_prob will be far off; '
                    'initialise on a batch of real, varied images', stacklevel=2)
  params_rng, call_rng = jax.random.split(rng)
  variables = _run_init(model, continuous, {'params': params_rng, **rngs_for(call_rng)}, images)
  return {k: v for k, v in variables.items() if k != FIT_COLLECTION}


def log_prob(model: EIWFlow, variables: Variables, images: jax.Array,
             rng: Optional[jax.Array] = None) -> jax.Array:
  """Lower bound on log P(x) per integer image, in nats: [B]."""
  checks.check_images(model, images, 'log_prob')
  rng = checks.check_rng(rng, 'log_prob')
  return apply(model, variables, 'log_prob', images, rngs=rngs_for(rng))[0]


def log_prob_continuous(model: EIWFlow, variables: Variables, y: jax.Array,
                        rng: Optional[jax.Array] = None) -> jax.Array:
  """log p(y) per continuous y [B, H, W, C], in nats: [B].

  The flow's density on real y, log N(z; 0, I) + log|det dz/dy|, with every split
  prior ('standard' or 'conditional') and the learned base inside z and the logdet:
  no dequantisation, no bin width. Any finite y is accepted (the model was trained
  on [-0.5, 0.5)). With DenseFlow's augmentation it is the one-sample bound that
  `rng`'s noise gives.
  """
  checks.check_continuous(model, y, 'log_prob_continuous', bounded=False)
  rng = checks.check_rng(rng, 'log_prob_continuous')
  return apply(model, variables, 'log_prob_continuous', y, method=EIWFlow.latent_log_prob,
               rngs=rngs_for(rng))


def loss(model: EIWFlow, variables: Variables, images: jax.Array,
         rng: Optional[jax.Array] = None,
         kl_weight: Optional[float] = None) -> Tuple[jax.Array, dict]:
  """Eq. 12 on a batch: (scalar loss in nats, metrics dict with bpd, loss_bpd, kl).

  The loss also holds the Shuffle reading's own fitting loss (metric
  `shuffle_fit`; 'likelihood' and 'oracle' only), which trains no flow parameter.
  With the FFJORD backbone, metric `nfe` is the number of dynamics-net evaluations
  of the forward solves (all scales and blocks), and metric `ode_penalty` the
  kinetic / Jacobian regularisers (model.ffjord.*_weight > 0), added to the loss.
  """
  (value, metrics), _ = _objective(model, variables, images, rng, kl_weight, [], 'loss')
  return value, metrics


def train_loss(model: EIWFlow, variables: Variables, images: jax.Array,
               rng: Optional[jax.Array] = None,
               kl_weight: Optional[float] = None) -> Tuple[jax.Array, dict, dict]:
  """`loss` in training mode: (loss, metrics, consts). The model's constants are
  updated as training updates them: a model that normalises with batch statistics
  (model.denseflow.norm='batch') uses this batch's and moves their running averages
  toward them, and the Shuffle counts the update and refreshes the order it uses
  every model.shuffle_refresh_every of them (eiw_jax/shuffle/base.py). Put `consts`
  back into the variables with the update of the parameters; `loss`, `log_prob` and
  `sample` then use them as they are."""
  (value, metrics), state = _objective(model, variables, images, rng, kl_weight, ['consts'],
                                       'train_loss')
  return value, metrics, state.get('consts', {})


def _objective(model, variables, images, rng, kl_weight, mutable, where):
  checks.check_images(model, images, where)
  rng = checks.check_rng(rng, where)
  (lp, kls), state = apply(
      model, variables, where, images, rngs=rngs_for(rng),
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


def forward(model: EIWFlow, variables: Variables, y: jax.Array,
            rng: Optional[jax.Array] = None) -> Tuple[Latents, jax.Array]:
  """Continuous y [B, H, W, C] in [-0.5, 0.5] -> (latents [z_1..z_K], logdet [B]):
  the flow's data-to-latent map and log|det dz/dy|, as every bijector's `forward`.

  `rng` feeds the noise of augmented flows (DenseFlow's cross-unit coupling).
  The Shuffle's KL is in `shuffle_info`.
  """
  checks.check_continuous(model, y, 'forward')
  return _forward(model, variables, y, rng, 'forward')


def forward_unbounded(model: EIWFlow, variables: Variables, y: jax.Array,
                      rng: Optional[jax.Array] = None, where: str = 'forward'):
  """`forward` on any finite y (the range unchecked: the distribution face's event
  space is all real y)."""
  checks.check_continuous(model, y, where, bounded=False)
  return _forward(model, variables, y, rng, where)


def _forward(model, variables, y, rng, where):
  rng = checks.check_rng(rng, where)
  latents, logdet, _ = apply(model, variables, where, y, method=EIWFlow.encode,
                             rngs=rngs_for(rng))
  return latents, logdet


def inverse(model: EIWFlow, variables: Variables,
            latents: Sequence[jax.Array]) -> Tuple[jax.Array, jax.Array]:
  """Latents [z_1..z_K] -> (continuous y [B, H, W, C], log|det dy/dz| [B])."""
  return _inverse(model, variables, latents, 'inverse')


def _inverse(model, variables, latents, where):
  checks.check_variables(variables, where)
  shapes = [s[1:] for s in latent_shapes(model, variables)]
  checks.check_latents(model, latents, where, shapes)
  return apply(model, variables, where, list(latents), method=EIWFlow.decode)


def encode(model: EIWFlow, variables: Variables, y: jax.Array,
           rng: Optional[jax.Array] = None) -> Latents:
  """Continuous y -> per-scale latents [z_1..z_K], each ~N(0, I) under the model."""
  checks.check_continuous(model, y, 'encode')
  return _forward(model, variables, y, rng, 'encode')[0]


def decode(model: EIWFlow, variables: Variables, latents: Sequence[jax.Array]) -> jax.Array:
  """Per-scale latents -> continuous y."""
  return _inverse(model, variables, latents, 'decode')[0]


_SHAPES: dict = {}  # model -> per-image latent shapes (they depend on the model alone)


def latent_shapes(model: EIWFlow, variables: Variables,
                  batch_size: int = 1) -> List[Tuple[int, ...]]:
  """Shapes [B, H_k, W_k, C_k] of the per-scale latents for `batch_size` images
  (no computation; `unflatten_latents` takes them as they are)."""
  per_image = _SHAPES.get(model)
  if per_image is None:
    checks.check_variables(variables, 'latent_shapes')
    y = jax.ShapeDtypeStruct((1, *model.image_shape), jnp.float32)
    out = jax.eval_shape(lambda v, y: apply(model, v, 'latent_shapes', y, method=EIWFlow.encode,
                                            rngs=rngs_for(jax.random.key(0)))[0], variables, y)
    per_image = [tuple(z.shape[1:]) for z in out]
    if len(_SHAPES) >= 32:
      _SHAPES.clear()
    _SHAPES[model] = per_image
  return [(batch_size, *s) for s in per_image]


def sample_latents(model: EIWFlow, variables: Variables, rng: jax.Array, n: int,
                   temperature: float = 1.0) -> Latents:
  """z ~ N(0, T^2 I) at every scale."""
  checks.check_sampling(n, temperature, 'sample_latents')
  rng = checks.check_rng(rng, 'sample_latents')
  shapes = latent_shapes(model, variables, n)
  keys = jax.random.split(rng, len(shapes))
  return [temperature * jax.random.normal(k, s) for k, s in zip(keys, shapes)]


def sample(model: EIWFlow, variables: Variables, rng: jax.Array, n: int,
           temperature: float = 1.0) -> jax.Array:
  """n integer images [n, H, W, C] in [0, 2^b), uint8 like the data, from the model at
  temperature T >= 0."""
  checks.check_sampling(n, temperature, 'sample')
  y = decode(model, variables, sample_latents(model, variables, rng, n, temperature))
  return to_discrete(y, model.num_bits).astype(jnp.uint8)
