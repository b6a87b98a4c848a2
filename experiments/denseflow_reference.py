"""DenseFlow's own numbers on random weights, and eiw_jax's on the same weights.

    DENSEFLOW_SRC=<clone of DenseFlow> python experiments/denseflow_reference.py small \
        --out=tests/fixtures/denseflow_small.npz
    DENSEFLOW_SRC=<clone of DenseFlow> python experiments/denseflow_reference.py df74 --batch=8

Needs PyTorch and a clone of DenseFlow's public code (its setup.py does not
install: the clone goes on sys.path, as ../shared/peer/README.md sets up); eiw_jax
itself never imports either.

DenseFlow's model is built by its own get_model, untouched, and given random weights
from a recipe (every tensor = base + scale * U(-1, 1) from numpy's RandomState(seed),
whose stream numpy keeps fixed; zero-initialised output layers and BatchNorm's
running averages perturbed too). It runs in eval mode on fixed 8-bit images, with
the noise fixed: its dequantiser's base noise and each cross-unit coupling's eta
are fed in (torch.randn and the block's noise distribution answer with given
arrays), so both implementations see the same noise. Recorded per image: the
latents (each transition's factored half, and the last scale's output standardised
by the base), the log-determinant of the dense blocks (with the augmentation
terms), the dequantiser's log q and u, and the log-likelihood bound. Inverse: from
(a) the forward latents and (b) latents drawn at temperature 0.8 (--temperature),
DenseFlow's sampler (Flow.sample, its transitions' and base's draws fed the same
way) gives y before and the integer image after quantisation. Each is computed
twice: in float32, and in float64 (model.double(); the context net's input cast,
which DenseFlow hard-codes as float(), made double too; the totals summed in float64).

`small` (3 scales, units 2 2 1, modules 2 1 1, width 8, growth 4, 16x16x3, batch 4)
writes the fixture of tests/test_convert_denseflow.py: the weight recipe with a
checksum of the weights, the images, the noise and DenseFlow's outputs. `df74` is
DenseFlow-74-10 on 32x32x3 (batch 8 by default); its invertible 1x1 convs keep
DenseFlow's own (orthogonal, seeded) initialisation, and after the recipe its
ActNorms and BatchNorm averages come from one training-mode pass of DenseFlow's code
on the images (`data_init`: 74 random ActNorms let the activations grow without bound).
Both modes convert the weights (eiw_jax.convert.denseflow_layout), run eiw_jax's float32
model with the same noise, and print the largest differences: against DenseFlow's
float64 run (the reference) and DenseFlow's own float32 run beside them.
(experiments/denseflow_files.py writes the tests' other PyTorch files.)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys

import numpy as np

REPO = os.environ.get('DENSEFLOW_SRC') or sys.exit('set DENSEFLOW_SRC to a clone of DenseFlow')
sys.path.insert(0, os.path.join(REPO, 'experiments', 'image'))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import torch
from model.model_flow import get_model
from denseflow.nn.layers import LambdaLayer

CONFIGS = {
    'small': dict(block_conf=[2, 2, 1], layers_conf=[2, 1, 1], layer_mid_chnls=[8, 8, 8],
                  growth_rate=4, shape=(3, 16, 16), batch=4, data_init=False),
    # DenseFlow's own (orthogonal) 1x1 convs: 78 random non-orthogonal ones make the
    # inverse too ill-conditioned to compare in float32.
    'df74': dict(block_conf=[6, 4, 1], layers_conf=[5, 6, 20], layer_mid_chnls=[48, 48, 48],
                 growth_rate=10, shape=(3, 32, 32), batch=8, data_init=True,
                 own_1x1=True),
}
_KEPT = ('ldj_per_dim', '_shift', '_scale', 'temperature', 'dist.buffer')
# The layers DenseFlow initialises at zero (so that a new model is the identity).
_ZERO_INIT = ('dn.transform.2.weight', 'transformation.2.weight',
              'coupling_net.0.transform.2.weight')


def recipe(state: dict, own_1x1: bool = False) -> list:
  """[name, shape, base, scale, seed] of every float tensor given random values; the
  rest (the shift to [-0.5, 0.5], the sigmoid's temperature, ...; with `own_1x1` the
  invertible 1x1 convs) keeps DenseFlow's."""
  out = []
  for i, (name, t) in enumerate(state.items()):
    if not t.is_floating_point() or name.endswith(_KEPT + ('initialized',)):
      continue
    if own_1x1 and t.dim() == 2:
      continue
    shape = list(t.shape)
    if name.endswith('running_var'):
      base, scale = 'one', 0.5
    elif name.endswith('mix_conv.0.weight'):               # BatchNorm's scale
      base, scale = 'one', 0.2
    elif t.dim() == 2:                                      # invertible 1x1 convs
      base, scale = 'eye', 0.5 / math.sqrt(shape[0])
    elif t.dim() == 4 and name.endswith('.weight'):         # convs: PyTorch's default range
      scale = 1.0 / math.sqrt(int(np.prod(shape[1:])))
      base, scale = 'zero', scale * (0.3 if name.endswith(_ZERO_INIT) else 1.0)
    elif name.endswith(('shift', '.loc')):
      base, scale = 'zero', 0.3
    elif name.endswith('log_scale'):
      base, scale = 'zero', 0.2
    else:                                                   # biases, BatchNorm's mean and shift
      zero_init = name.replace('.bias', '.weight').endswith(_ZERO_INIT)
      base, scale = 'zero', 0.05 if zero_init else 0.1
    out.append([name, shape, base, scale, 1000 + i])
  return out


def data_init(make_model, images, state) -> dict:
  """The weights after one training-mode pass of DenseFlow's model on `images`: its
  ActNorms initialise from the data (DenseFlow's own data-dependent init) and every
  BatchNorm's running averages become this batch's statistics (momentum 1). Without
  it the random ActNorms of 74 modules let the activations grow without bound
  (log-likelihoods of -1e11 nats, float32 and float64 runs of DenseFlow's code
  disagreeing in every latent), a regime no trained model is in."""
  model = make_model().train()
  with torch.no_grad():
    for name, buffer in model.named_buffers():
      if name.endswith('initialized'):
        buffer.zero_()
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.momentum = 1.0
    model.log_prob(torch.from_numpy(_nchw(images)).long())
  new = model.state_dict()
  return {k: new[k].numpy().copy() for k in state}


def make_weights(rows: list) -> dict:
  """The recipe's tensors (float32), exactly as tests/test_convert_denseflow.py makes them."""
  out = {}
  for name, shape, base, scale, seed in rows:
    noise = np.random.RandomState(seed).uniform(-1.0, 1.0, size=shape)
    start = {'zero': 0.0, 'one': 1.0, 'eye': np.eye(shape[0]) if base == 'eye' else 0.0}[base]
    out[name] = (start + scale * noise).astype(np.float32)
  return out


def checksum(weights: dict) -> str:
  digest = hashlib.sha256()
  for name in sorted(weights):
    digest.update(name.encode())
    digest.update(np.ascontiguousarray(weights[name], np.float32).tobytes())
  return digest.hexdigest()


class _Queue:
  """Hands out given arrays in order, in place of torch.randn or a noise distribution."""

  def __init__(self, arrays, dtype):
    self.arrays = [torch.from_numpy(np.asarray(a)).to(dtype) for a in arrays]
    self.normal = torch.distributions.Normal(0.0, 1.0)

  def pop(self, shape):
    assert self.arrays, 'DenseFlow drew more noise than was given'
    t = self.arrays.pop(0)
    assert tuple(t.shape) == tuple(shape), (tuple(t.shape), tuple(shape))
    return t

  def sample(self, shape):      # as torch.distributions.Normal.sample
    return self.pop(shape)

  def log_prob(self, x):
    return self.normal.log_prob(x)

  def randn(self, *size, **unused):
    return self.pop(size[0] if len(size) == 1 and not isinstance(size[0], int) else size)


def _nchw(a):
  return np.ascontiguousarray(np.moveaxis(np.asarray(a), -1, 1))


def _nhwc(t):
  return np.moveaxis(t.detach().cpu().numpy(), 1, -1)


def run_denseflow(make_model, images, eps, noise, latents_b, dtype) -> dict:
  """DenseFlow's forward and both inverses, the noise fed in (module docstring).

  `make_model()` builds a new model each time: DenseFlow's coupling nets keep a
  closure over their own layers, so a deep copy would still run the original's."""
  model = make_model().to(dtype).eval()
  d = int(np.prod(images.shape[1:]))
  bits = int(round(-float(model.transforms[0].ldj_per_dim) / math.log(2)))
  if dtype == torch.float64:
    model.transforms[0].encoder.context_init[0] = LambdaLayer(
        lambda x: 2 * x.double() / (2 ** bits - 1) - 1)
  blocks = [t for t in model.transforms if hasattr(t, 'noise_params')]
  transitions = [t for t in model.transforms if hasattr(t, 'squeeze') and hasattr(t, 'dist')]
  rec = {'block_ldj': [], 'transition_logp': [], 'factored': []}
  for b in blocks:
    b.register_forward_hook(lambda m, i, o: rec['block_ldj'].append(o[1]))
  for t in transitions:
    t.register_forward_hook(lambda m, i, o: rec['transition_logp'].append(o[1]))
    t.squeeze.register_forward_hook(lambda m, i, o: rec['factored'].append(o[0].chunk(2, 1)[1]))
  encoder = model.transforms[0].encoder
  sample_with_log_prob = encoder.sample_with_log_prob

  def recorded(context):
    rec['u'], rec['log_q'] = sample_with_log_prob(context)
    return rec['u'], rec['log_q']

  encoder.sample_with_log_prob = recorded
  wide = lambda t: t.to(torch.float64)
  real_randn, out = torch.randn, {}
  try:
    with torch.no_grad():
      torch.randn = _Queue([_nchw(eps)], dtype).randn
      for b, arrays in zip(blocks, noise):
        b.noise_dist = _Queue([_nchw(a) for a in arrays], dtype)
      x = torch.from_numpy(_nchw(images)).long()
      final, out['log_px_own'] = model.log_prob(x, return_z=True)
      base = model.base_dist
      out['latents'] = [*rec['factored'], (final - base.loc) * torch.exp(-base.log_scale)]
      out['logdet'] = sum(wide(l) for l in rec['block_ldj'])
      out['log_py'] = (out['logdet'] + sum(wide(l) for l in rec['transition_logp'])
                       + wide(base.log_prob(final)))
      out['log_q'], out['u'] = rec['log_q'], rec['u']
      out['log_px'] = out['log_py'] - wide(rec['log_q']) - d * bits * math.log(2)
      for name, latents in (('a', out['latents']), ('b', latents_b)):
        latents = [l if isinstance(l, torch.Tensor) else torch.from_numpy(_nchw(l))
                   for l in latents]
        # Flow.sample draws the base's noise, then each transition's, last scale first.
        queue = _Queue(latents[::-1], dtype)
        torch.randn = queue.randn
        out[f'image_{name}'] = _sample(model, len(images), out, f'y_{name}')
        assert not queue.arrays, 'DenseFlow drew less noise than was given'
  finally:
    torch.randn = real_randn
  res = {}
  for key, value in out.items():
    if key == 'latents':
      res[key] = [_nhwc(l).astype(np.float64) for l in value]
    elif value.dim() == 4:
      res[key] = _nhwc(value)
      res[key] = res[key] if key.startswith('image') else res[key].astype(np.float64)
    else:
      res[key] = value.cpu().numpy().astype(np.float64)
  return res


def _sample(model, n, out, key):
  """model.sample(n), keeping y (before quantisation) in out[key]."""
  dequantizer = model.transforms[0]
  quantize = dequantizer.inverse

  def kept(z):
    out[key] = z - 0.5
    return quantize(z)

  dequantizer.inverse = kept
  try:
    return model.sample(n)
  finally:
    del dequantizer.inverse


def run_eiw(weights: dict, images, eps, noise, latents_b) -> dict:
  """eiw_jax's float32 model on the converted weights, the same noise."""
  import jax
  import jax.numpy as jnp
  import eiw_jax
  from eiw_jax.convert import denseflow as convert_denseflow, denseflow_layout
  from eiw_jax.train import xla_options
  arch, variables = denseflow_layout.to_variables(weights)
  config = convert_denseflow.make_config(arch, 'synthetic', images.shape[1])
  model = eiw_jax.build(config)

  def forward(m, x, eps, noise):
    u, log_q = m.dequantizer(x, m.num_bits, eps=eps)
    y = (x.astype(jnp.float32) + u) / 2 ** m.num_bits - 0.5
    latents, logdet, _ = m.flow(y, noise=noise)
    return u, log_q, latents, logdet

  once = xla_options.run_once('denseflow')  # programs that run once: compile them faster
  u, log_q, latents, logdet = jax.jit(lambda v, *a: model.apply(v, *a, method=forward),
                                      compiler_options=once)(variables, images, eps, noise)
  # Our logdet includes the base's standardisation, -H W sum(log sigma): DenseFlow's
  # dense blocks' log-determinant is the rest.
  raw, bound = variables['params']['flow']['base']['log_scale'], denseflow_layout.BASE_BOUND
  pixels = np.prod(latents[-1].shape[1:3])
  base_logdet = -pixels * np.sum(bound * np.tanh(raw.astype(np.float64) / bound))
  log_py = np.asarray(logdet, np.float64) + sum(
      np.sum(-0.5 * np.asarray(z, np.float64) ** 2 - 0.5 * math.log(2 * math.pi),
             axis=(1, 2, 3)) for z in latents)
  d = int(np.prod(images.shape[1:]))
  out = dict(u=np.asarray(u), log_q=np.asarray(log_q), latents=[np.asarray(z) for z in latents],
             logdet=np.asarray(logdet, np.float64) - base_logdet, log_py=log_py,
             log_px=log_py - np.asarray(log_q, np.float64) - d * arch.num_bits * math.log(2))
  inverse = jax.jit(lambda v, z: eiw_jax.inverse(model, v, z)[0], compiler_options=once)
  for name, lat in (('a', out['latents']), ('b', latents_b)):
    y = inverse(variables, [jnp.asarray(z, jnp.float32) for z in lat])
    out[f'y_{name}'] = np.asarray(y)
    out[f'image_{name}'] = np.asarray(eiw_jax.to_discrete(y, arch.num_bits))
  return out


def differences(ours: dict, ref: dict) -> dict:
  """The largest differences of `ours` from `ref` (relative: to the largest |ref|).
  The inverses' over the entries finite in both (with the count of the others)."""
  rel = lambda a, b: float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))
  out = dict(
      latents_rel=max(rel(a, b) for a, b in zip(ours['latents'], ref['latents'])),
      log_px_rel=float(np.max(np.abs(ours['log_px'] - ref['log_px']) / np.abs(ref['log_px']))),
      log_px_abs=float(np.max(np.abs(ours['log_px'] - ref['log_px']))),
      logdet_abs=float(np.max(np.abs(ours['logdet'] - ref['logdet']))),
      log_q_abs=float(np.max(np.abs(ours['log_q'] - ref['log_q']))),
      u_abs=float(np.max(np.abs(ours['u'] - ref['u']))))
  for name in ('a', 'b'):
    a, b = np.asarray(ours[f'y_{name}'], np.float64), ref[f'y_{name}']
    finite = np.isfinite(a) & np.isfinite(b)
    out[f'y_{name}_abs'] = float(np.max(np.abs(a - b)[finite])) if finite.any() else None
    out[f'y_{name}_nonfinite'] = int(np.sum(~finite))
    out[f'pixels_{name}_differing'] = int(np.sum(ours[f'image_{name}'] != ref[f'image_{name}']))
  out['pixels'] = int(np.prod(ours['image_a'].shape))
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('config', choices=sorted(CONFIGS))
  p.add_argument('--batch', type=int, default=None, help='images (default: the config\'s)')
  p.add_argument('--seed', type=int, default=0, help='images and noise')
  p.add_argument('--temperature', type=float, default=0.8, help='of the latents (b)')
  p.add_argument('--out', default=None, help='write the test fixture here (npz)')
  a = p.parse_args()
  cfg = CONFIGS[a.config]
  if a.out and cfg['data_init']:
    sys.exit('--out: the fixture is of the small configuration, whose weights are all '
             'from the recipe')
  c, h, w = cfg['shape']
  batch = a.batch or cfg['batch']
  args = argparse.Namespace(checkpointing=False, **{k: cfg[k] for k in (
      'block_conf', 'layers_conf', 'layer_mid_chnls', 'growth_rate')})
  torch.manual_seed(0)
  state = get_model(args, data_shape=(c, h, w)).state_dict()
  rows = recipe(state, cfg.get('own_1x1', False))
  weights = make_weights(rows)
  kept = {k: v.numpy() for k, v in state.items() if k not in weights}
  for k in kept:
    if k.endswith('initialized'):
      kept[k] = np.ones_like(kept[k])          # ActNorm set up, as in any trained model
    if k.endswith('num_batches_tracked'):
      kept[k] = np.full_like(kept[k], 1000)
  full = {**kept, **weights}

  def make_model():
    model = get_model(args, data_shape=(c, h, w))
    model.load_state_dict({k: torch.from_numpy(np.asarray(full[k])) for k in state})
    return model

  rng = np.random.RandomState(a.seed)
  images = rng.randint(0, 256, size=(batch, h, w, c)).astype(np.int32)
  if cfg['data_init']:
    full = data_init(make_model, images, state)

  eps = rng.standard_normal((batch, h // 2, w // 2, 4 * c)).astype(np.float32)
  noise, side = [], h // 2
  for units in cfg['block_conf']:
    noise.append([rng.standard_normal((batch, side, side, cfg['growth_rate'])).astype(np.float32)
                  for _ in range(units - 1)])
    side //= 2
  shapes = _latent_shapes(cfg, batch)
  latents_b = [(a.temperature * rng.standard_normal(s)).astype(np.float32) for s in shapes]

  ref = run_denseflow(make_model, images, eps, noise, latents_b, torch.float64)
  ref32 = run_denseflow(make_model, images, eps, noise, latents_b, torch.float32)
  ours = run_eiw(full, images, eps, noise, latents_b)
  report = dict(config=a.config, batch=batch, temperature=a.temperature,
                torch=torch.__version__,
                eiw_jax_float32_vs_denseflow_float64=differences(ours, ref),
                denseflow_float32_vs_float64=differences(ref32, ref),
                eiw_jax_float32_vs_denseflow_float32=differences(ours, ref32),
                ranges={k: [float(ref[k].min()), float(ref[k].max())]
                        for k in ('log_px', 'logdet', 'log_q')})
  print(json.dumps(report, indent=2))
  if a.out:
    arrays = {f'kept/{k}': np.asarray(v) for k, v in kept.items()}
    arrays.update(images=images, eps=eps)
    for k, arrs in enumerate(noise):
      for i, arr in enumerate(arrs):
        arrays[f'noise/{k}/{i}'] = arr
    for k, arr in enumerate(latents_b):
      arrays[f'latents_b/{k}'] = arr
    for key, value in ref.items():      # the float64 run (the float32 one is in the report)
      if key == 'latents':
        for k, arr in enumerate(value):
          arrays[f'ref/latents/{k}'] = arr
      else:
        arrays[f'ref/{key}'] = value
    meta = dict(recipe=rows, checksum=checksum(weights), report=report,
                denseflow_args={k: cfg[k] for k in ('block_conf', 'layers_conf',
                                                    'layer_mid_chnls', 'growth_rate')},
                shape=[h, w, c], temperature=a.temperature)
    np.savez_compressed(a.out, meta=np.array(json.dumps(meta)), **arrays)
    print(f'wrote {a.out} ({os.path.getsize(a.out):,} bytes)')


def _latent_shapes(cfg, batch) -> list:
  """[B, H, W, C] of each latent: every transition's factored half, then the last scale."""
  c, h, _ = cfg['shape']
  ch, side, out = 4 * c, h // 2, []
  for k, units in enumerate(cfg['block_conf']):
    ch += (units - 1) * cfg['growth_rate']
    if k == len(cfg['block_conf']) - 1:
      out.append((batch, side, side, ch))
    else:
      out.append((batch, side // 2, side // 2, 2 * ch))
      ch, side = 2 * ch, side // 2
  return out


if __name__ == '__main__':
  main()
