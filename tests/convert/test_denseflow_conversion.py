"""eiw_jax's DenseFlow on DenseFlow's weights computes what DenseFlow's code computes,
and DenseFlow's checkpoints load without PyTorch and without running code (issue 27).

tests/fixtures holds files written by PyTorch and DenseFlow's own code, untouched
(experiments/denseflow_reference.py, experiments/denseflow_files.py; neither is
needed here):

- denseflow_small.npz: a 3-scale DenseFlow (units 2 2 1, modules 2 1 1, width 8,
  growth 4, 16x16x3 images) with random weights, run in float64 on 4 fixed images
  with fixed noise. The weights are stored as their recipe (numpy's RandomState
  stream) with a checksum of the values, so the file stays small; the noise, the
  latents, log-determinant, log q, log-likelihood and both inverses as arrays.
- denseflow_tiny_run/: a run directory as DenseFlow's train.py leaves it
  (args.pickle, check/checkpoint.pt gzipped) with constant weights and an Adamax state.
- torch_views.pt: tensors sharing, offsetting and striding their storages.
"""
import gzip
import hashlib
import json
import math
import os
import pickle
import shutil
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eiw_jax
from eiw_jax.convert import denseflow as convert_denseflow, denseflow_layout, torch_checkpoint
from eiw_jax.train import runs, xla_options
from eiw_jax.errors import UserError

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'fixtures')
RTOL = 1e-5


def make_weights(rows):
  """The fixture's recipe -> float32 arrays (as experiments/denseflow_reference.py)."""
  out = {}
  for name, shape, base, scale, seed in rows:
    noise = np.random.RandomState(seed).uniform(-1.0, 1.0, size=shape)
    start = {'zero': 0.0, 'one': 1.0, 'eye': np.eye(shape[0]) if base == 'eye' else 0.0}[base]
    out[name] = (start + scale * noise).astype(np.float32)
  return out


def checksum(weights):
  digest = hashlib.sha256()
  for name in sorted(weights):
    digest.update(name.encode())
    digest.update(np.ascontiguousarray(weights[name], np.float32).tobytes())
  return digest.hexdigest()


@pytest.fixture(scope='module')
def small():
  with np.load(os.path.join(DATA, 'denseflow_small.npz')) as f:
    data = {k: f[k] for k in f.files}
  meta = json.loads(str(data.pop('meta')))
  weights = make_weights(meta['recipe'])
  kept = {k[len('kept/'):]: v for k, v in data.items() if k.startswith('kept/')}
  scales = len(meta['denseflow_args']['block_conf'])
  noise = [[data[f'noise/{k}/{i}'] for i in range(u - 1)]
           for k, u in enumerate(meta['denseflow_args']['block_conf'])]
  return dict(meta=meta, weights=weights, state={**kept, **weights}, data=data, noise=noise,
              latents_b=[data[f'latents_b/{k}'] for k in range(scales)],
              ref_latents=[data[f'ref/latents/{k}'] for k in range(scales)])


def _forward(m, x, eps, noise):
  """EIWFlow.__call__'s steps with the dequantiser's and the augmentation's noise given."""
  u, log_q = m.dequantizer(x, m.num_bits, eps=eps)
  y = (x.astype(jnp.float32) + u) / 2 ** m.num_bits - 0.5
  latents, logdet, _ = m.flow(y, noise=noise)
  return u, log_q, latents, logdet


@pytest.fixture(scope='module')
def converted(small):
  arch, variables = denseflow_layout.to_variables(small['state'])
  config = convert_denseflow.make_config(arch, 'synthetic', small['meta']['shape'][0])
  model = eiw_jax.build(config)
  d = small['data']
  once = xla_options.run_once('denseflow')  # each program runs once: compile it faster
  u, log_q, latents, logdet = jax.jit(lambda v, *a: model.apply(v, *a, method=_forward),
                                      compiler_options=once)(
      variables, d['images'], d['eps'], small['noise'])
  inverse = jax.jit(lambda v, z: eiw_jax.inverse(model, v, z)[0], compiler_options=once)
  return dict(arch=arch, config=config, model=model, variables=variables, u=np.asarray(u),
              log_q=np.asarray(log_q, np.float64), logdet=np.asarray(logdet, np.float64),
              latents=[np.asarray(z, np.float64) for z in latents],
              y_a=np.asarray(inverse(variables, latents)),
              y_b=np.asarray(inverse(variables, [jnp.asarray(z) for z in small['latents_b']])))


def test_the_fixtures_weights_are_the_ones_denseflow_ran(small):
  assert checksum(small['weights']) == small['meta']['checksum']


def test_the_architecture_is_read_from_the_tensors(converted):
  assert converted['arch'] == denseflow_layout.Arch(
      channels=3, units=(2, 2, 1), modules=(2, 1, 1), widths=(8, 8, 8), growth=4, num_bits=8)
  d = converted['config'].model.denseflow
  assert (d.norm, d.net.tokens, d.net.hidden, d.net.embed, converted['config'].model.shuffle) == (
      'batch', 'nchw_reshape', 8, 4, False)


def test_latents_and_log_likelihood_match_denseflow(small, converted):
  ref = small['data']
  for ours, theirs in zip(converted['latents'], small['ref_latents']):
    assert ours.shape == theirs.shape
    assert np.max(np.abs(ours - theirs)) <= RTOL * np.max(np.abs(theirs))
  # log p(y) from our latents and logdet (it includes the base's standardisation).
  log_py = converted['logdet'] + sum(
      np.sum(-0.5 * z ** 2 - 0.5 * math.log(2 * math.pi), axis=(1, 2, 3))
      for z in converted['latents'])
  num_dims = int(np.prod(ref['images'].shape[1:]))
  log_px = log_py - converted['log_q'] - num_dims * 8 * math.log(2)
  np.testing.assert_allclose(log_px, ref['ref/log_px'], rtol=RTOL, atol=0)
  np.testing.assert_allclose(log_py, ref['ref/log_py'], rtol=RTOL, atol=0)


def test_log_determinant_and_dequantizer_match_denseflow(small, converted):
  ref = small['data']
  # DenseFlow's dense blocks' log-determinant: ours less the base's -H W sum(log sigma).
  raw = converted['variables']['params']['flow']['base']['log_scale'].astype(np.float64)
  bound = denseflow_layout.BASE_BOUND
  pixels = np.prod(converted['latents'][-1].shape[1:3])
  blocks = converted['logdet'] + pixels * np.sum(bound * np.tanh(raw / bound))
  np.testing.assert_allclose(blocks, ref['ref/logdet'], rtol=RTOL, atol=0)
  np.testing.assert_allclose(converted['log_q'], ref['ref/log_q'], rtol=RTOL, atol=0)
  np.testing.assert_allclose(converted['u'], ref['ref/u'], rtol=0, atol=1e-6)


def test_samples_match_denseflows_sampler(small, converted):
  """From the forward latents (a) and from latents at temperature 0.8 (b), y before
  quantisation within 1e-5 (DenseFlow's own float32 run is 2e-6 from its float64
  one), and the quantised images equal wherever y is not within 1e-5 of a bin edge."""
  ref = small['data']
  np.testing.assert_allclose(converted['y_a'], ref['ref/y_a'], rtol=0, atol=1e-5)
  np.testing.assert_allclose(converted['y_b'], ref['ref/y_b'], rtol=0, atol=1e-5)
  # (a) reconstructs the dequantised input y = (x + u) / 256 - 0.5 ...
  x = ref['images']
  np.testing.assert_allclose(converted['y_a'], (x + ref['ref/u']) / 256 - 0.5, atol=1e-5)
  for name in ('a', 'b'):
    ours = np.asarray(eiw_jax.to_discrete(jnp.asarray(converted[f'y_{name}']), 8))
    scaled = (ref[f'ref/y_{name}'] + 0.5) * 256
    clear = np.abs(scaled - np.round(scaled)) > 256 * 1e-5
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(ours[clear], ref[f'ref/image_{name}'][clear])
  # ... and so (a) gives back the images themselves.
  np.testing.assert_array_equal(ref['ref/image_a'], x)


# ----- the converter's checks ------------------------------------------------------


def test_unknown_missing_and_misshapen_tensors_are_named(small):
  state = small['state']
  with pytest.raises(UserError, match=r'^transforms\.3\.extra\.weight is no tensor of '):
    denseflow_layout.to_variables({**state, 'transforms.3.extra.weight': np.zeros(3)})
  key = 'transforms.5.blocks.1.transforms.0.transforms.1.weight'
  with pytest.raises(UserError, match=f'^the checkpoint lacks {key}'):
    denseflow_layout.to_variables({k: v for k, v in state.items() if k != key})
  key = 'transforms.3.noise_params.0.transformation.0.bias'
  with pytest.raises(UserError, match=rf'^{key} has shape \(47,\), .* has \(48,\)'):
    denseflow_layout.to_variables({**state, key: np.zeros(47, np.float32)})
  with pytest.raises(UserError, match='^not a DenseFlow checkpoint: it has no tensor'):
    denseflow_layout.to_variables({'conv1.weight': np.zeros((3, 3, 1, 1))})


def test_dataparallel_names_are_accepted(small):
  arch, _ = denseflow_layout.to_variables({f'module.{k}': v for k, v in small['state'].items()})
  assert arch.units == (2, 2, 1)


def test_fixed_buffers_and_the_base_bound_are_checked(small):
  state = small['state']
  with pytest.raises(UserError, match=r'^transforms\.1\._shift is \[0\.0\], but DenseFlow'):
    denseflow_layout.to_variables({**state, 'transforms.1._shift': np.float32(0.0)})
  with pytest.raises(UserError, match=r'^transforms\.0\.ldj_per_dim is .* not -log\(2\^b\)'):
    denseflow_layout.to_variables({**state, 'transforms.0.ldj_per_dim': np.float32(-1.0)})
  big = state['base_dist.log_scale'].copy()
  big[0, 5] = -4.5
  with pytest.raises(UserError, match=r'^base_dist\.log_scale holds a log-scale of -4\.5'):
    denseflow_layout.to_variables({**state, 'base_dist.log_scale': big})


def test_layouts_against_hand_written_cases():
  """One conv (OIHW -> HWIO), the coupling's pair swap, ActNorm's sign, the base's artanh."""
  w = np.arange(2 * 3 * 3 * 3, dtype=np.float64).reshape(2, 3, 3, 3)   # [O, I, kh, kw]
  hwio = denseflow_layout.convert_tensor('w', w, 'conv')
  assert hwio.shape == (3, 3, 3, 2) and hwio[2, 1, 0, 1] == w[1, 0, 2, 1]
  out = np.arange(6 * 2, dtype=np.float64).reshape(6, 2, 1, 1)        # 3 (scale, shift) pairs
  swapped = denseflow_layout.convert_tensor('w', out, 'conv_pairs')[0, 0]
  np.testing.assert_array_equal(swapped[:, 0::2], out[1::2, :, 0, 0].T)  # ours: shift first
  np.testing.assert_array_equal(swapped[:, 1::2], out[0::2, :, 0, 0].T)
  shift = np.array([[[[0.5]], [[-1.0]]]])
  np.testing.assert_array_equal(denseflow_layout.convert_tensor('s', shift, 'neg_vec'),
                                [-0.5, 1.0])
  log_scale = np.array([-3.9, 0.0, 1.25])
  raw = denseflow_layout.convert_tensor('b', log_scale, 'bounded_log_scale')
  np.testing.assert_allclose(4.0 * np.tanh(raw / 4.0), log_scale, rtol=1e-12)


def test_config_needs_one_coupling_width(small):
  arch = denseflow_layout.Arch(3, (2, 2, 1), (2, 1, 1), (8, 16, 8), 4, 8)
  with pytest.raises(UserError, match=r'coupling widths \[8, 16, 8\]'):
    convert_denseflow.make_config(arch, 'synthetic', 16)


def test_args_that_contradict_the_weights_are_refused():
  arch = denseflow_layout.Arch(3, (6, 4, 1), (5, 6, 20), (48, 48, 48), 10, 8)
  args = dict(block_conf=[6, 4, 1], layers_conf=[5, 6, 20], layer_mid_chnls=[48, 48, 48],
              growth_rate=10, num_bits=8, dataset='cifar10')
  convert_denseflow.check_args(arch, args, 'args.pickle')
  with pytest.raises(UserError, match=r'^args.pickle says layers_conf=\[5, 6, 19\], but the '
                     r'checkpoint holds \[5, 6, 20\]'):
    convert_denseflow.check_args(arch, {**args, 'layers_conf': [5, 6, 19]}, 'args.pickle')
  with pytest.raises(UserError, match='dataset=mnist .1 channels'):
    convert_denseflow.check_args(arch, {**args, 'dataset': 'mnist'}, 'args.pickle')


# ----- reading PyTorch's files without PyTorch --------------------------------------


def test_torch_files_are_read_with_their_views_and_dtypes():
  obj = torch_checkpoint.load(os.path.join(DATA, 'torch_views.pt'))
  v = obj['views']
  a = np.arange(24, dtype=np.float32).reshape(4, 6)
  np.testing.assert_array_equal(v['a'], a)
  np.testing.assert_array_equal(v['transposed'], a.T)
  np.testing.assert_array_equal(v['offset'], a[1:, 2:])
  np.testing.assert_array_equal(v['strided'], a[:, ::2])
  np.testing.assert_array_equal(v['shared'], a.reshape(6, 4))
  assert v['half'].dtype == np.float16 and v['half'].tolist() == [0, 0.25, 0.5, 0.75, 1.0]
  assert v['bf16'].dtype.name == 'bfloat16' and v['bf16'].astype(np.float32).tolist() == [0, 1, 2]
  assert v['long'].dtype == np.int64 and v['long'].shape == () and int(v['long']) == 7
  assert v['boolean'].tolist() == [True, False] and v['empty'].shape == (0, 3)
  np.testing.assert_array_equal(v['parameter'], np.ones(2, np.float32))
  assert obj['args'] == {'x': 1}


class _RunsCode:
  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (os.system, (f'touch {self.path}',))


def _torch_like_zip(path, payload: bytes):
  """A zip laid out as torch.save's, with `payload` as its pickle."""
  with zipfile.ZipFile(path, 'w') as zf:
    zf.writestr('archive/data.pkl', payload)
    zf.writestr('archive/byteorder', 'little')


def test_a_pickle_that_runs_code_is_refused_in_one_line(tmp_path):
  marker = tmp_path / 'ran'
  payload = pickle.dumps({'model': _RunsCode(marker)})
  plain, archive = tmp_path / 'args.pickle', tmp_path / 'checkpoint.pt'
  plain.write_bytes(payload)
  _torch_like_zip(archive, payload)
  for path in (plain, archive):
    with pytest.raises(UserError) as e:
      torch_checkpoint.load(str(path))
    message = str(e.value)
    assert '\n' not in message
    assert f'{path} refers to {os.system.__module__}.system' in message
    assert 'refusing to load it' in message
  evil_eval = pickle.dumps((eval, ('1 + 1',)))   # a global of builtins
  plain.write_bytes(evil_eval)
  with pytest.raises(UserError, match='refers to builtins.eval'):
    torch_checkpoint.load(str(plain))
  assert not marker.exists()


def test_damaged_files_are_refused_in_one_line(tmp_path):
  src = zipfile.ZipFile(os.path.join(DATA, 'torch_views.pt'))
  damaged = tmp_path / 'damaged.pt'
  with zipfile.ZipFile(damaged, 'w') as zf:
    for info in src.infolist():
      if not info.filename.endswith('/data/0'):
        zf.writestr(info, src.read(info))
  with pytest.raises(UserError, match=r'has no torch_views/data/0; the file is damaged'):
    torch_checkpoint.load(str(damaged))
  truncated = tmp_path / 'truncated.pickle'
  truncated.write_bytes(pickle.dumps({'a': [1, 2, 3]})[:-5])
  with pytest.raises(UserError, match='neither a PyTorch zip checkpoint nor a readable pickle'):
    torch_checkpoint.load(str(truncated))


# ----- the command -----------------------------------------------------------------


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """DenseFlow's tiny run directory, its checkpoint unzipped."""
  run = tmp_path_factory.mktemp('denseflow') / 'run'
  (run / 'check').mkdir(parents=True)
  shutil.copy(os.path.join(DATA, 'denseflow_tiny_run', 'args.pickle'), run / 'args.pickle')
  with gzip.open(os.path.join(DATA, 'denseflow_tiny_run', 'check', 'checkpoint.pt.gz')) as f:
    (run / 'check' / 'checkpoint.pt').write_bytes(f.read())
  return run


def test_the_command_writes_a_run_that_load_run_opens(tiny_run, tmp_path, capsys):
  workdir = tmp_path / 'converted'
  assert convert_denseflow.main([str(tiny_run), str(workdir)]) == 0
  assert f'evaluate: python eval.py --workdir={workdir}' in capsys.readouterr().out
  config = runs.saved_config(str(workdir))
  model, variables, step = runs.load_for_eval(config, str(workdir))  # what load_run does
  assert step == 0
  with torch_checkpoint.Checkpoint(str(tiny_run / 'check' / 'checkpoint.pt')) as ckpt:
    arch, expected = denseflow_layout.to_variables(ckpt.obj['model'])
    shift = ckpt.obj['model']['transforms.3.blocks.1.transforms.0.transforms.0.shift'].numpy()
  assert arch == denseflow_layout.Arch(3, (2, 1), (1, 1), (8, 8), 2, 8)
  jax.tree.map(np.testing.assert_array_equal, variables, expected)
  loc = variables['params']['flow']['scale_0']['unit1']['steps']['step']['actnorm']['loc'][0]
  np.testing.assert_array_equal(loc, -shift.reshape(-1))     # a spot check of one tensor
  assert (config.data.name, config.data.image_size, config.eval.iw_samples) == ('cifar10', 32,
                                                                               1000)
  assert list(config.model.denseflow.units) == [2, 1] and not config.model.shuffle
  assert model.flow.num_scales == 2
  note = json.loads((workdir / 'converted_from.json').read_text())
  digest = hashlib.sha256((tiny_run / 'check' / 'checkpoint.pt').read_bytes()).hexdigest()
  assert (note['epoch'], note['sha256']) == (10, digest)
  assert note['num_params'] == sum(x.size for x in jax.tree.leaves(expected['params']))


def test_the_command_says_what_is_wrong_in_one_line(tiny_run, tmp_path, capsys):
  evil = tmp_path / 'evil'
  (evil / 'check').mkdir(parents=True)
  _torch_like_zip(evil / 'check' / 'checkpoint.pt', pickle.dumps(_RunsCode(tmp_path / 'x')))
  shutil.copy(tiny_run / 'args.pickle', evil / 'args.pickle')
  cases = [(evil, 'refers to posix.system' if os.name == 'posix' else 'refers to'),
           (tmp_path / 'nowhere', 'no DenseFlow checkpoint at'),
           (tiny_run / 'args.pickle', 'holds no state dict')]
  for source, words in cases:
    assert convert_denseflow.main([str(source), str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1 and words in err, err
  assert not (tmp_path / 'x').exists()
  lone = tmp_path / 'lone.pt'
  shutil.copy(tiny_run / 'check' / 'checkpoint.pt', lone)
  assert convert_denseflow.main([str(lone), str(tmp_path / 'out')]) == 2
  assert 'pass --dataset' in capsys.readouterr().err


def test_the_token_key_is_checked_and_old_configs_keep_pixels():
  from eiw_jax.train import recipes
  from eiw_jax.train.run_config import structure_difference as _structure_difference
  cfg = recipes.denseflow_base(name='synthetic', image_size=16, batch_size=2, train_steps=1)
  assert cfg.model.denseflow.net.tokens == 'pixels'
  cfg.model.denseflow.net.tokens = 'rows'
  with pytest.raises(UserError, match=r"model.denseflow.net.tokens must be 'pixels' or "
                     r"'nchw_reshape', got 'rows'"):
    eiw_jax.validate(cfg)
  new = json.loads(json.dumps({'model': cfg.model.to_dict()}))  # as config.json holds it
  old = json.loads(json.dumps(new))
  del old['model']['denseflow']['net']['tokens']    # a config saved before the key
  new['model']['denseflow']['net']['tokens'] = 'pixels'
  assert _structure_difference(old, new) is None
  new['model']['denseflow']['net']['tokens'] = 'nchw_reshape'
  assert _structure_difference(old, new)[0] == 'model.denseflow.net.tokens'
