"""Where each tensor of DenseFlow's PyTorch model (Grcić et al. 2021, its official
code) lives in eiw_jax's DenseFlow, and how it is laid out there.

DenseFlow's `model.state_dict()` names tensors by module path. For a model of K
scales (`block_conf` units, `layers_conf` modules per unit, `layer_mid_chnls`
coupling widths, `growth_rate`) on C-channel images:

    transforms.0       variational dequantizer (encoder.*: its context net, base,
                       4 x [1x1 conv, conditional coupling], last 1x1 conv, sigmoid)
    transforms.1       the shift to [-0.5, 0.5] (buffers)
    transforms.2       the initial squeeze (no tensors)
    transforms.3+2k    scale k: noise_params.j (cross-unit net of unit j+1),
                       blocks.u.transforms.m.transforms.{0: ActNorm, 1: 1x1 conv,
                       2: coupling, 3: channel switch}
    transforms.4+2k    transition k (squeeze, split; a buffer only)
    base_dist          the learned per-channel Gaussian of the last latent

Layouts. Convolution kernels are [O, I, kh, kw] there, [kh, kw, I, O] here. A
coupling's output conv yields per transformed channel j the pair (log-scale input,
shift) at channels (2j, 2j+1) there ("sequential" parameters) and (shift,
log-scale input) here, so its output channels are swapped in pairs. ActNorm is
z = (x - shift) exp(-log_scale) there and y = (x + loc) exp(log_scale) here:
loc = -shift, log_scale = -log_scale. The last latent's log-scale is free there
and b tanh(raw / b) here (eiw_jax.flow.Standardize, b = 4): raw = b artanh(log_scale / b).
The modules of a unit are stacked along a leading axis here (bijectors.scan.Repeat).
BatchNorm's running averages go to the 'consts' collection. The widths DenseFlow's
code fixes (coupling dense block depth 7 and growth 64; the dequantizer's) are
`DENSE_DEPTH`, ... below. Shapes are checked against the architecture that the
tensors themselves imply (`infer`), so a checkpoint of another model is refused
with the name of the first tensor that does not fit.
"""
from __future__ import annotations

import math
import re
from typing import NamedTuple, Optional

import numpy as np

from eiw_jax.errors import UserError
from eiw_jax.flow import Standardize

DENSE_DEPTH, DENSE_GROWTH = 7, 64  # the coupling network's dense block
LANDMARKS, NEWTON_ITERS = 4, 6     # its Nystrom attention; embed = width // 2
CROSS_MULT = 4                     # cross-unit net width = 4 x its input channels
DEQUANT = dict(num_steps=4, hidden=64, depth=4, growth=64, context_channels=64,
               context_depth=4, context_growth=16)
BASE_BOUND = Standardize.log_scale_bound   # the last latent's log-scale bound here (4)


class Arch(NamedTuple):
  """The block configuration a DenseFlow state dict holds."""
  channels: int                  # image channels C
  units: tuple                   # block_conf
  modules: tuple                 # layers_conf
  widths: tuple                  # layer_mid_chnls
  growth: Optional[int]          # growth_rate (None: no scale has two units)
  num_bits: int

  def scale_channels(self) -> list:
    """Channels entering each scale (after the squeezes and splits)."""
    out, c = [], 4 * self.channels
    for units in self.units:
      out.append(c)
      c = 2 * (c + (units - 1) * (self.growth or 0))
    return out


class Row(NamedTuple):
  shape: tuple      # the tensor's shape in DenseFlow
  path: tuple       # ('params' or 'consts', ...) in eiw_jax's variables; () if dropped
  kind: str         # how it is converted (`convert_tensor`)
  stack: tuple = ()  # (index, length) along the leading axis of a unit's modules


def _pairs(n: int) -> np.ndarray:
  return np.arange(n).reshape(-1, 2)[:, ::-1].reshape(-1)   # 1, 0, 3, 2, ...


def convert_tensor(key: str, value: np.ndarray, kind: str) -> np.ndarray:
  """DenseFlow's tensor `key` -> eiw_jax's layout (see the module docstring)."""
  v = np.asarray(value, np.float64)
  if kind == 'conv':
    return v.transpose(2, 3, 1, 0)
  if kind == 'conv_pairs':
    return v[_pairs(v.shape[0])].transpose(2, 3, 1, 0)
  if kind == 'vec':
    return v.reshape(-1)
  if kind == 'vec_pairs':
    return v[_pairs(v.shape[0])]
  if kind == 'neg_vec':
    return -v.reshape(-1)
  if kind == 'matrix':
    return v
  if kind == 'bounded_log_scale':
    v = v.reshape(-1)
    if not np.all(np.abs(v) < BASE_BOUND):
      raise UserError(f'{key} holds a log-scale of {v[np.argmax(np.abs(v))]:.3g}, beyond '
                      f"eiw_jax's bound for the last latent (|log scale| < {BASE_BOUND})")
    return BASE_BOUND * np.arctanh(v / BASE_BOUND)
  raise ValueError(f'unknown kind {kind!r}')


def value(tensor) -> np.ndarray:
  """A state dict's entry as a numpy array (a checkpoint's lazy tensor is read)."""
  return tensor.numpy() if hasattr(tensor, 'numpy') else np.asarray(tensor)


def _need(state: dict, key: str):
  if key not in state:
    raise UserError(f'not a DenseFlow checkpoint: it has no tensor {key} (is it a '
                    "state dict of DenseFlow's model, as its train.py saves?)")
  return state[key]


def _count(state: dict, pattern: str) -> int:
  """1 + the largest integer the regex group of `pattern` matches at a key's start."""
  found = [int(m.group(1)) for k in state for m in [re.match(pattern, k)] if m]
  return 1 + max(found) if found else 0


def infer(state: dict) -> Arch:
  """The block configuration from the tensors' names and shapes."""
  c = _need(state, 'transforms.0.encoder.context_init.1.0.nn.0.weight').shape[1]
  units, modules, widths = [], [], []
  while True:
    t = 3 + 2 * len(units)
    n = _count(state, rf'transforms\.{t}\.blocks\.(\d+)\.')
    if not n:
      break
    units.append(n)
    modules.append(_count(state, rf'transforms\.{t}\.blocks\.0\.transforms\.(\d+)\.'))
    widths.append(_need(state, f'transforms.{t}.blocks.0.transforms.0.transforms.2.'
                        'coupling_net.0.dn.transform.0.weight').shape[0])
  if not units:
    _need(state, 'transforms.3.blocks.0.transforms.0.transforms.0.shift')
  growth = None
  for k, n in enumerate(units):
    if n > 1:
      growth = _need(state, f'transforms.{3 + 2 * k}.noise_params.0.transformation.2.'
                     'weight').shape[0] // 2
      break
  ldj = float(value(_need(state, 'transforms.0.ldj_per_dim')))
  bits = -ldj / math.log(2)
  if not (abs(bits - round(bits)) < 1e-4 and 1 <= round(bits) <= 8):
    raise UserError(f'transforms.0.ldj_per_dim is {ldj}, not -log(2^b) for b in 1..8; '
                    'not a checkpoint of DenseFlow on b-bit images')
  return Arch(c, tuple(units), tuple(modules), tuple(widths), growth, int(round(bits)))


class _Table:
  """DenseFlow tensor name -> Row, built from an Arch."""

  def __init__(self):
    self.rows = {}

  def add(self, key, shape, path, kind, stack=()):
    self.rows[key] = Row(tuple(shape), tuple(path), kind, stack)

  def conv(self, key, path, cin, cout, k, stack=(), pairs=False, bias=True):
    self.add(f'{key}.weight', (cout, cin, k, k), path + ('kernel',),
             'conv_pairs' if pairs else 'conv', stack)
    if bias:
      self.add(f'{key}.bias', (cout,), path + ('bias',), 'vec_pairs' if pairs else 'vec', stack)

  def dense_block(self, key, path, cin, depth, growth, features, stack=()):
    for i in range(depth):
      w = cin + i * growth
      self.conv(f'{key}.{i}.nn.0', path + (f'layer{i}_1x1',), w, w, 1, stack)
      self.conv(f'{key}.{i}.nn.2', path + (f'layer{i}_3x3',), w, growth, 3, stack)
    self.conv(f'{key}.{depth}.conv', path + ('gate',), cin + depth * growth, 3 * features, 1,
              stack)

  def dropped(self, key, shape, expect=None):
    """A tensor eiw_jax has no use for; `expect`: the value the model needs it to hold."""
    self.add(key, shape, (), 'drop' if expect is None else f'expect {expect}')


def table(arch: Arch) -> dict:
  """Every tensor of DenseFlow's state dict for `arch`: name -> Row."""
  t = _Table()
  c, d = arch.channels, DEQUANT
  t.dropped('transforms.0.ldj_per_dim', ())
  enc, deq = 'transforms.0.encoder.', ('params', 'dequantizer')
  t.add(enc + 'base_dist.loc', (1, 4 * c, 1, 1), deq + ('base_loc',), 'vec')
  t.add(enc + 'base_dist.log_scale', (1, 4 * c, 1, 1), deq + ('base_log_scale',), 'vec')
  t.dense_block(enc + 'context_init.1', deq + ('context_in',), c, d['context_depth'],
                d['context_growth'], d['hidden'])
  t.conv(enc + 'context_init.2', deq + ('context_down',), d['hidden'], d['hidden'], 2)
  t.dense_block(enc + 'context_init.3', deq + ('context_out',), d['hidden'],
                d['context_depth'], d['context_growth'], d['context_channels'])
  for s in range(d['num_steps']):
    t.add(f'{enc}transforms.{2 * s}.weight', (4 * c, 4 * c), deq + (f'invconv{s}', 'kernel'),
          'matrix')
    net, ours = f'{enc}transforms.{2 * s + 1}.coupling_net.0.transform', deq + (
        f'coupling{s}', '_DequantCouplingNet_0')
    t.conv(f'{net}.0', ours + ('in',), 2 * c + d['context_channels'], d['hidden'], 1)
    t.dense_block(f'{net}.1.dense', ours + ('dense',), d['hidden'], d['depth'], d['growth'],
                  d['hidden'])
    t.conv(f'{net}.2', deq + (f'coupling{s}', 'out'), d['hidden'], 4 * c, 1, pairs=True)
  t.add(f'{enc}transforms.{2 * d["num_steps"]}.weight', (4 * c, 4 * c),
        deq + (f'invconv{d["num_steps"]}', 'kernel'), 'matrix')
  t.dropped(f'{enc}transforms.{2 * d["num_steps"] + 2}.temperature', (1,), expect=1.0)
  t.dropped('transforms.1._shift', (), expect=-0.5)
  t.dropped('transforms.1._scale', (), expect=1.0)
  g = arch.growth or 0
  for k, c0 in enumerate(arch.scale_channels()):
    blk, scale = f'transforms.{3 + 2 * k}', ('flow', f'scale_{k}')
    ctx = c0
    for j in range(arch.units[k] - 1):
      net = f'{blk}.noise_params.{j}.transformation'
      ours = ('params',) + scale + (f'cross{j + 1}',)
      t.conv(f'{net}.0', ours + ('hidden',), ctx, CROSS_MULT * ctx, 3)
      t.conv(f'{net}.2', ours + ('out',), CROSS_MULT * ctx, 2 * g, 1)
      ctx += c0 + j * g
    width = arch.widths[k]
    for u in range(arch.units[k]):
      ch = c0 + u * g
      step = scale + (f'unit{u}', 'steps', 'step')
      for m in range(arch.modules[k]):
        stack, key = (m, arch.modules[k]), f'{blk}.blocks.{u}.transforms.{m}.transforms'
        params, consts = ('params',) + step, ('consts',) + step
        for name in ('shift', 'log_scale'):
          ours = 'loc' if name == 'shift' else name
          t.add(f'{key}.0.{name}', (1, ch, 1, 1), params + ('actnorm', ours), 'neg_vec', stack)
        t.dropped(f'{key}.0.initialized', (1,))
        t.add(f'{key}.1.weight', (ch, ch), params + ('invconv', 'kernel'), 'matrix', stack)
        net, cn = f'{key}.2.coupling_net.0.dn.transform', ('coupling', 'DenseCouplingNet_0')
        t.conv(f'{net}.0', params + cn + ('in',), ch - ch // 2, width, 1, stack)
        t.dense_block(f'{net}.1.dense', params + cn + ('dense',), width, DENSE_DEPTH,
                      DENSE_GROWTH, width, stack)
        t.conv(f'{net}.1.mha.qkv', params + cn + ('attention', 'qkv'), width,
               3 * (width // 2), 1, stack)
        t.conv(f'{net}.1.mha.out_transform', params + cn + ('attention', 'out'), width // 2,
               width, 1, stack)
        bn = f'{net}.1.mix_conv.0'
        t.add(f'{bn}.weight', (2 * width,), params + cn + ('norm', 'scale'), 'vec', stack)
        t.add(f'{bn}.bias', (2 * width,), params + cn + ('norm', 'bias'), 'vec', stack)
        t.add(f'{bn}.running_mean', (2 * width,), consts + cn + ('norm', 'mean'), 'vec', stack)
        t.add(f'{bn}.running_var', (2 * width,), consts + cn + ('norm', 'var'), 'vec', stack)
        t.dropped(f'{bn}.num_batches_tracked', ())
        t.conv(f'{net}.1.mix_conv.2', params + cn + ('mix',), 2 * width, width, 1, stack,
               bias=False)
        t.conv(f'{net}.2', params + ('coupling', 'out'), width, 2 * (ch // 2), 1, stack,
               pairs=True)
    if k < len(arch.units) - 1:
      t.dropped(f'transforms.{4 + 2 * k}.dist.buffer', (1,))
  last = arch.scale_channels()[-1] + (arch.units[-1] - 1) * g
  t.add('base_dist.loc', (1, last, 1, 1), ('params', 'flow', 'base', 'mean'), 'vec')
  t.add('base_dist.log_scale', (1, last, 1, 1), ('params', 'flow', 'base', 'log_scale'),
        'bounded_log_scale')
  return t.rows


def _strip_parallel(state: dict) -> dict:
  """A model wrapped in DataParallel (DenseFlow's --parallel=dp) saves 'module.<name>'."""
  if state and all(k.startswith('module.') for k in state):
    return {k[len('module.'):]: v for k, v in state.items()}
  return state


def describe(arch: Arch) -> str:
  return (f'units {list(arch.units)}, modules {list(arch.modules)}, widths '
          f'{list(arch.widths)}, growth {arch.growth}, {arch.channels}-channel images')


def to_variables(state: dict) -> tuple:
  """DenseFlow's `model.state_dict()` (name -> array, or lazy tensor with .shape and
  .numpy()) -> (Arch, eiw_jax variables {'params': ..., 'consts': ...}, float32 numpy).

  Every tensor must be one the inferred architecture has, with its shape: the first
  that is not, or that is missing, is named in a UserError.
  """
  state = _strip_parallel(dict(state))
  arch = infer(state)
  rows = table(arch)
  for key in state:
    if key not in rows:
      raise UserError(f"{key} is no tensor of DenseFlow's model with {describe(arch)}; "
                      'the checkpoint holds another architecture')
  for key, row in rows.items():
    if key not in state:
      raise UserError(f"the checkpoint lacks {key}, which DenseFlow's model with "
                      f'{describe(arch)} has')
    if tuple(state[key].shape) != row.shape:
      raise UserError(f'{key} has shape {tuple(state[key].shape)}, but DenseFlow\'s model '
                      f'with {describe(arch)} has {row.shape} there')
  variables, stacks = {}, {}
  for key, row in rows.items():
    if row.kind.startswith('expect'):
      expected = float(row.kind.split()[1])
      found = value(state[key]).reshape(-1)
      if not np.allclose(found, expected):
        raise UserError(f"{key} is {found.tolist()}, but DenseFlow's model fixes it at "
                        f'{expected}; the checkpoint holds another model')
    if not row.path:
      continue
    array = convert_tensor(key, value(state[key]), row.kind).astype(np.float32)
    if row.stack:
      index, length = row.stack
      stacks.setdefault(row.path, np.zeros((length,) + array.shape, np.float32))[index] = array
    else:
      _put(variables, row.path, array)
  for path, array in stacks.items():
    _put(variables, path, array)
  return arch, variables


def _put(tree: dict, path: tuple, array: np.ndarray) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = array
