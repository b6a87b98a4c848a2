"""A continuous normalizing flow as a scale body: FFJORD (Grathwohl et al., "FFJORD:
Free-form continuous dynamics for scalable reversible generative models", ICLR 2019),
the CNF of the paper's Table 6 (§8, the lambda ablation for continuous flows).

One block solves dz/dt = f(z, t) with a convolutional dynamics network f:

    forward (data -> latent):  z(0) = x, solve t: 0 -> 1, y = z(1)
    inverse (latent -> data):  z(1) = y, solve t: 1 -> 0, x = z(0)

Sign convention, as every bijector (bijectors/base.py): `logdet` is log|det dy/dx|
for `forward` and log|det dx/dy| for `inverse`. By the instantaneous change of
variables, d/dt log|det dz(t)/dz(0)| = tr(df/dz), so the ODE carries
l' = tr(df/dz) next to z and forward returns l(1) - l(0) = +integral_0^1 tr dt
(FFJORD writes the same fact as d log p(z(t))/dt = -tr(df/dz)). The inverse solves
the same system from t = 1 to 0, so its logdet is the negative of the forward's at
matching points, up to the solver's tolerance.

Trace: 'hutchinson' (training) estimates tr(J) by eps^T J eps with one probe eps
per image (Rademacher or Gaussian), fixed over the solve and drawn per image from
the 'noise' RNG stream (eiw_jax/noise.py); J eps is one forward-mode product. A call
without that stream (sampling, `api.inverse`) draws the probe from a fixed key.
'exact' sums e_i^T J e_i over the D = H*W*C basis vectors (D forward-mode products
per evaluation): for evaluation and tests at tiny sizes.

Dynamics network: 3x3 convolutions of width `hidden` with softplus between them,
each conditioned on t by FFJORD's 'concat' layer (t as an extra input channel) or
its 'concatsquash' layer (conv(h) * sigmoid(a t + b) + c t). The last convolution
starts at zero, so every block starts as the identity. Each block may start with
an ActNorm (data-dependent init).

Solver: diffrax, adaptive Dopri5 by default (rtol/atol), gradients by diffrax's
recursive checkpointing (`adjoint='recursive_checkpoint'`) or the continuous adjoint
solved backwards (`adjoint='backsolve'`, constant memory in the number of steps);
`adjoint='forward'` supports forward-mode autodiff only (jax.jvp, jax.jacfwd).
A solve that fails (max_steps reached) gives a NaN logdet, so the training loop
skips the step as for any non-finite loss. The number of function evaluations of
each solve is sown into the 'intermediates' collection as 'nfe'.

Regularisation (Finlay et al., "How to train your neural ODE", ICML 2020), off by
default: `kinetic_weight` * int_0^1 ||f||^2 dt and `jacobian_weight` * int_0^1
||J eps||^2 dt (Hutchinson's estimate of the Jacobian's squared Frobenius norm, with
the trace's probe) are integrated with the forward solve and sown per image into
the 'ode_penalty' collection; `api.loss` adds their batch mean to the loss (metric
`ode_penalty`).
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from eiw_jax import noise as per_image
from eiw_jax.bijectors import ActNorm, Bijector, compose, sum_event, zero_logdet
from eiw_jax.errors import UserError, positive_int

SOLVERS = ('dopri5', 'tsit5', 'bosh3', 'heun', 'euler')  # diffrax's Dopri5 ... Euler
# Vector-field evaluations (per step, at the start): the first-same-as-last solvers
# evaluate f once before the first step and reuse each step's last stage.
_EVALS = {'dopri5': (6, 1), 'tsit5': (6, 1), 'bosh3': (3, 1), 'heun': (2, 0), 'euler': (1, 0)}
ADJOINTS = ('recursive_checkpoint', 'backsolve', 'forward')
TRACES = ('hutchinson', 'exact')
PROBES = ('rademacher', 'gaussian')
TIME_LAYERS = ('concat', 'concatsquash')
NFE_COLLECTION = 'intermediates'
PENALTY_COLLECTION = 'ode_penalty'


def ffjord_defaults() -> dict:
  """The `model.ffjord` keys (FFJORD's image settings: two blocks per scale, dynamics
  nets of three hidden 3x3 convolutions of width 64 and an output one, softplus,
  'concat' time layers, Rademacher probes, Dopri5 at rtol = atol = 1e-5)."""
  return dict(
      blocks=2,                 # CNF blocks per scale, each with its own dynamics net
      hidden=64,                # dynamics-net width
      layers=4,                 # 3x3 convolutions per dynamics net (the last outputs C)
      time_layer='concat',      # 'concat' (t as a channel) or 'concatsquash'
      actnorm=True,             # an ActNorm before each block
      solver='dopri5',          # 'dopri5', 'tsit5', 'bosh3' (adaptive), 'heun', 'euler'
      rtol=1e-5, atol=1e-5,
      fixed_steps=0,            # > 0: that many fixed steps instead of the adaptive controller
      max_steps=1000,           # a solve taking more steps fails (NaN logdet)
      trace='hutchinson',       # 'hutchinson' (training) or 'exact' (tiny sizes)
      probe='rademacher',       # Hutchinson's probe: 'rademacher' or 'gaussian'
      adjoint='recursive_checkpoint',  # or 'backsolve'
      kinetic_weight=0.0,       # Finlay et al. 2020: weight of int ||f||^2 dt; 0 = off
      jacobian_weight=0.0,      # ... of int ||eps^T df/dz||^2 dt (needs trace='hutchinson')
  )


def conv3x3(x, w):
  """Stride-1 'SAME' 3x3 convolution, x [B,H,W,I], w [3,3,I,O] (HWIO) -> [B,H,W,O].

  On CPU it is written as one matmul over the nine shifted copies of x: inside the
  solver's loop, XLA:CPU runs the transposed convolutions of reverse-over-forward
  autodiff (Hutchinson's J eps, then the gradient) in a slow layout; slices and
  matmuls do not have that problem (the gradient of 19 Euler steps of one 14x14x4
  block at batch 64: about 19 s with convolutions, 2.9 s as matmuls, 2 CPU cores).
  """
  if jax.default_backend() != 'cpu':
    return lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  height, width = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  shifted = [padded[:, i:i + height, j:j + width] for i in range(3) for j in range(3)]
  return jnp.concatenate(shifted, axis=-1) @ w.reshape(-1, w.shape[-1])  # [B, H, W, O]


class TimeConv(nn.Module):
  """A 3x3 convolution (kernel and bias as nn.Conv's) conditioned on the scalar time t."""
  features: int
  time_layer: str = 'concat'
  zero_init: bool = False

  def _conv(self, h):
    init = nn.initializers.zeros if self.zero_init else nn.initializers.lecun_normal()
    w = self.param('kernel', init, (3, 3, h.shape[-1], self.features))
    return conv3x3(h, w) + self.param('bias', nn.initializers.zeros, (self.features,))

  @nn.compact
  def __call__(self, h, t):
    t = jnp.asarray(t, h.dtype)
    if self.time_layer == 'concat':
      tt = jnp.broadcast_to(t, h.shape[:-1] + (1,))
      return self._conv(jnp.concatenate([h, tt], axis=-1))
    gate = nn.Dense(self.features, name='gate')(t[None])
    shift = nn.Dense(self.features, use_bias=False, name='shift',
                     kernel_init=nn.initializers.zeros if self.zero_init
                     else nn.initializers.lecun_normal())(t[None])
    return self._conv(h) * nn.sigmoid(gate) + shift


class DynamicsNet(nn.Module):
  """f(z, t): [B, H, W, C] -> [B, H, W, C]; zero at initialisation."""
  channels: int
  hidden: int = 64
  layers: int = 4
  time_layer: str = 'concat'

  @nn.compact
  def __call__(self, z, t):
    h = z
    for i in range(self.layers - 1):
      h = nn.softplus(TimeConv(self.hidden, self.time_layer, name=f'conv_{i}')(h, t))
    return TimeConv(self.channels, self.time_layer, zero_init=True,
                    name=f'conv_{self.layers - 1}')(h, t)


def exact_trace(fn, z) -> jnp.ndarray:
  """tr(d fn / d z) per image [B], by D forward-mode products with the basis vectors
  (fn acts on each image separately, as a convolutional net does)."""
  shape = z.shape[1:]
  basis = jnp.eye(int(np.prod(shape)), dtype=z.dtype).reshape(-1, *shape)

  def diagonal_part(e):
    _, column = jax.jvp(fn, (z,), (jnp.broadcast_to(e, z.shape),))
    return sum_event(column * e)

  return jnp.sum(jax.vmap(diagonal_part)(basis), axis=0)


def _vector_field(net, trace, penalties, t, state, args):
  """d/dt of (z, logdet[, int ||f||^2, int ||J eps||^2])."""
  params, probe = args
  z = state[0]
  fn = lambda z: net.apply({'params': params}, z, t)
  if trace == 'exact':
    dz = fn(z)
    out = (dz, exact_trace(fn, z))
  else:
    dz, j_probe = jax.jvp(fn, (z,), (probe,))
    out = (dz, sum_event(j_probe * probe))
  if penalties:
    frobenius = sum_event(j_probe ** 2) if trace == 'hutchinson' else jnp.zeros_like(out[1])
    out += (sum_event(dz ** 2), frobenius)
  return out


class CNFBlock(Bijector):
  """One continuous flow z(0) -> z(1) with its logdet (see the module docstring).

  `trace` (None: the attribute) overrides the trace estimator per call.
  """
  hidden: int = 64
  layers: int = 4
  time_layer: str = 'concat'
  solver: str = 'dopri5'
  rtol: float = 1e-5
  atol: float = 1e-5
  fixed_steps: int = 0
  max_steps: int = 1000
  trace: str = 'hutchinson'
  probe: str = 'rademacher'
  adjoint: str = 'recursive_checkpoint'
  kinetic_weight: float = 0.0
  jacobian_weight: float = 0.0

  @nn.compact
  def __call__(self, x, inverse=False, trace: Optional[str] = None, **unused):
    trace = trace or self.trace
    for name, value, allowed in (('trace', trace, TRACES), ('probe', self.probe, PROBES),
                                 ('adjoint', self.adjoint, ADJOINTS),
                                 ('solver', self.solver, tuple(SOLVERS)),
                                 ('time_layer', self.time_layer, TIME_LAYERS)):
      if value not in allowed:
        raise ValueError(f'{name} must be one of {", ".join(allowed)}, got {value!r}')
    if self.jacobian_weight and trace != 'hutchinson':
      raise ValueError("jacobian_weight > 0 needs trace='hutchinson' (its probe)")
    penalties = bool(self.kinetic_weight or self.jacobian_weight) and not inverse
    net = DynamicsNet(x.shape[-1], self.hidden, self.layers, self.time_layer, parent=None)
    params = self.param('dynamics', lambda rng: net.init(rng, x, jnp.zeros(()))['params'])
    probe = None
    if trace == 'hutchinson':
      rng = self.make_rng('noise') if self.has_rng('noise') else jax.random.key(0)
      draw = per_image.rademacher if self.probe == 'rademacher' else per_image.normal
      probe = draw(rng, x.shape, x.dtype)
    import diffrax  # pylint: disable=g-import-not-at-top  (~200 modules: only for a CNF)
    solver = getattr(diffrax, self.solver.capitalize())  # 'dopri5': diffrax.Dopri5
    t0, t1 = (1.0, 0.0) if inverse else (0.0, 1.0)
    if self.fixed_steps:
      controller, dt0 = diffrax.ConstantStepSize(), (t1 - t0) / self.fixed_steps
    else:
      controller, dt0 = diffrax.PIDController(rtol=self.rtol, atol=self.atol), None
    adjoint = {'recursive_checkpoint': diffrax.RecursiveCheckpointAdjoint,
               'backsolve': diffrax.BacksolveAdjoint,
               'forward': diffrax.ForwardMode}[self.adjoint]()
    term = diffrax.ODETerm(functools.partial(_vector_field, net, trace, penalties))
    state = (x, zero_logdet(x)) + ((zero_logdet(x),) * 2 if penalties else ())
    sol = diffrax.diffeqsolve(
        term, solver(), t0, t1, dt0, state, args=(params, probe),
        stepsize_controller=controller, adjoint=adjoint, max_steps=self.max_steps, throw=False)
    y, logdet = sol.ys[0][-1], sol.ys[1][-1]
    ok = sol.result == diffrax.RESULTS.successful
    steps = sol.stats['num_steps']
    per_step, first = _EVALS[self.solver]
    self.sow(NFE_COLLECTION, 'nfe', per_step * steps + first)
    if penalties:  # per image [B]; api.loss adds their batch mean to the loss
      self.sow(PENALTY_COLLECTION, 'penalty',
               self.kinetic_weight * sol.ys[2][-1] + self.jacobian_weight * sol.ys[3][-1])
    return y.astype(x.dtype), jnp.where(ok, logdet, jnp.nan)


class FFJORDScale(Bijector):
  """A scale body of `blocks` CNF blocks, each after an optional ActNorm."""
  blocks: int = 2
  actnorm: bool = True
  block: dict = None  # CNFBlock's fields

  @nn.compact
  def __call__(self, x, inverse=False, **kwargs):
    kwargs.pop('noise', None)  # explicit augmentation noise: not used here
    layers = []
    for i in range(self.blocks):
      if self.actnorm:
        layers.append(ActNorm(name=f'actnorm_{i}'))
      layers.append(CNFBlock(**(self.block or {}), name=f'cnf_{i}'))
    return compose(layers, x, inverse, **kwargs)


_CHOICES = dict(solver=tuple(SOLVERS), trace=TRACES, probe=PROBES, adjoint=ADJOINTS,
                time_layer=TIME_LAYERS)


def model_defaults() -> dict:
  """A multi-scale FFJORD with the Shuffle at its transitions: the discrete backbone's
  assembly around CNF scale bodies, uniform dequantization, no initial squeeze (the
  first CNF sees the image)."""
  return dict(initial_squeeze=False, ffjord=ffjord_defaults())


def check(m) -> None:
  """model.ffjord holds every key of ffjord_defaults() with a usable value."""
  f = m.ffjord
  defaults = ffjord_defaults()
  if not f:
    raise UserError("model.backbone='ffjord' needs the model.ffjord settings, which this "
                    "config lacks; start from eiw_jax.model_config(backbone='ffjord') or "
                    'configs/cifar10.py:ffjord')
  unknown = sorted(set(f.keys()) - set(defaults))
  if unknown:
    raise UserError(f'unknown key model.ffjord.{unknown[0]}; the keys are: {", ".join(defaults)}')
  missing = [k for k in defaults if k not in f]
  if missing:
    raise UserError(f'model.ffjord has no key {missing[0]!r}; set config.model.ffjord.'
                    f'{missing[0]}={defaults[missing[0]]}')
  for key, allowed in _CHOICES.items():
    if f[key] not in allowed:
      raise UserError(f'model.ffjord.{key} must be one of {", ".join(allowed)}, got {f[key]!r}; '
                      f'set config.model.ffjord.{key}={defaults[key]}')
  for key in ('blocks', 'hidden', 'layers', 'max_steps'):
    if not positive_int(f[key]):
      raise UserError(f'model.ffjord.{key} must be an integer >= 1, got {f[key]!r}; '
                      f'set config.model.ffjord.{key}={defaults[key]}')
  for key in ('kinetic_weight', 'jacobian_weight'):
    if not 0 <= f[key] < float('inf'):
      raise UserError(f'model.ffjord.{key} must be >= 0 and finite, got {f[key]!r}; '
                      f'set config.model.ffjord.{key}=0 (off)')
  if f.jacobian_weight and f.trace != 'hutchinson':
    raise UserError("model.ffjord.jacobian_weight > 0 needs model.ffjord.trace='hutchinson'; "
                    'set config.model.ffjord.trace=hutchinson')
  for key in ('rtol', 'atol'):
    if not 0 < f[key] < 1:
      raise UserError(f'model.ffjord.{key} must be in (0, 1), got {f[key]!r}; '
                      f'set config.model.ffjord.{key}=1e-5')
  if not isinstance(f.fixed_steps, int) or f.fixed_steps < 0:
    raise UserError(f'model.ffjord.fixed_steps must be an integer >= 0 (0: adaptive), got '
                    f'{f.fixed_steps!r}; set config.model.ffjord.fixed_steps=0')
  if f.fixed_steps and f.fixed_steps > f.max_steps:
    raise UserError(f'model.ffjord.fixed_steps={f.fixed_steps} exceeds model.ffjord.max_steps='
                    f'{f.max_steps}; raise max_steps')
  if m.compute_dtype != 'float32':
    raise UserError("model.backbone='ffjord' solves its ODE in float32; set "
                    'config.model.compute_dtype=float32')


def body(m, dtype):
  """`body(k, name)`: scale k's CNF blocks (every scale has the same structure)."""
  del dtype  # the ODE is solved in float32 (check refuses another compute dtype)
  settings = m.ffjord.to_dict()
  blocks, actnorm = settings.pop('blocks'), settings.pop('actnorm')

  def make(k, name):
    del k
    return FFJORDScale(blocks=blocks, actnorm=actnorm, block=settings, name=name)
  return make
