"""DenseFlow's checkpoints as eiw_jax runs.

    python -m eiw_jax.convert.denseflow <run dir or checkpoint.pt> <workdir> [--dataset=NAME]

The source is what DenseFlow's experiments/image/train.py writes: a run directory
holding args.pickle (its command-line arguments) and check/checkpoint.pt (a dict
with the model's state dict under 'model', the optimiser's, the epoch), or that
checkpoint.pt itself (args.pickle is then looked for in the run directory above
check/). Without args.pickle, --dataset names DenseFlow's --dataset (it fixes the
image size, which the weights do not).

The output is a workdir that eval.py, `eiw_jax.load_run` and train.py open like
any run: config.json (the block configuration the weights hold, DenseFlow's
BatchNorm with its running averages, its attention token layout, no Shuffle) and
one checkpoint at step 0 with a fresh optimiser state; converted_from.json
records the source. The workdir's model computes DenseFlow's function on the same
weights (tests/test_convert_denseflow.py, docs/DENSEFLOW.md).

Both files are read without PyTorch and without running code from them
(eiw_jax.convert.torch_checkpoint); the tensor correspondence is eiw_jax.convert.denseflow_layout.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

from eiw_jax.convert import denseflow_layout as layout
from eiw_jax.convert import torch_checkpoint
from eiw_jax.train import config as config_lib, recipes
from eiw_jax.errors import UserError

# DenseFlow's datasets (its experiments/image/data/data.py): image size, channels.
SHAPES = {'cifar10': (32, 3), 'cifar10sup': (32, 3), 'cifar100sup': (32, 3),
          'imagenet32': (32, 3), 'imagenet64': (64, 3), 'celeba': (64, 3),
          'svhn': (32, 3), 'svhnsup': (32, 3), 'mnist': (28, 1)}
_DATA_NAMES = {'cifar10sup': 'cifar10'}           # the same images under eiw_jax's name
_IW_SAMPLES = {'cifar10': 1000}                   # DenseFlow's README: k = 200 elsewhere


def find_files(source: str) -> tuple:
  """(checkpoint path, args.pickle path or None) of a run directory or checkpoint file."""
  if os.path.isdir(source):
    run = source
    ckpt = os.path.join(source, 'check', 'checkpoint.pt')
    if not os.path.exists(ckpt) and os.path.exists(os.path.join(source, 'checkpoint.pt')):
      ckpt = os.path.join(source, 'checkpoint.pt')
  else:
    ckpt, parent = source, os.path.dirname(os.path.abspath(source))
    run = os.path.dirname(parent) if os.path.basename(parent) == 'check' else parent
  if not os.path.isfile(ckpt):
    raise UserError(f'no DenseFlow checkpoint at {ckpt}; pass a run directory of '
                    "DenseFlow's train.py (with check/checkpoint.pt) or the checkpoint file")
  args = os.path.join(run, 'args.pickle')
  return ckpt, args if os.path.isfile(args) else None


def read_args(path) -> dict:
  if path is None:
    return {}
  args = torch_checkpoint.load(path)
  if not isinstance(args, dict):
    raise UserError(f'{path} holds a {type(args).__name__}, not the argparse.Namespace '
                    "of DenseFlow's train.py")
  return args


def check_args(arch: layout.Arch, args: dict, path) -> None:
  """The settings args.pickle states agree with what the weights hold."""
  stated = dict(block_conf=list(arch.units), layers_conf=list(arch.modules),
                layer_mid_chnls=list(arch.widths), num_bits=arch.num_bits)
  if arch.growth is not None:
    stated['growth_rate'] = arch.growth
  for key, found in stated.items():
    if key in args and args[key] is not None and args[key] != found:
      raise UserError(f'{path} says {key}={args[key]}, but the checkpoint holds {found}; '
                      'are they of the same run?')
  dataset = args.get('dataset')
  if dataset in SHAPES and SHAPES[dataset][1] != arch.channels:
    raise UserError(f'{path} says dataset={dataset} ({SHAPES[dataset][1]} channels), but the '
                    f'checkpoint is of {arch.channels}-channel images')


def make_config(arch: layout.Arch, name: str, image_size: int, batch_size: int = 64):
  """The eiw_jax config of DenseFlow's model `arch` on the dataset `name` (eiw_jax's
  config.data.name) of image_size x image_size images."""
  if len(set(arch.widths)) != 1:
    raise UserError(f'the checkpoint uses coupling widths {list(arch.widths)} '
                    "(layer_mid_chnls); eiw_jax's DenseFlow has one width for all scales")
  cfg = recipes.denseflow_base(name=name, image_size=image_size, channels=arch.channels,
                               batch_size=batch_size, train_steps=1,
                               num_scales=len(arch.units))
  cfg.model.shuffle = False
  d = cfg.model.denseflow
  d.units, d.modules = list(arch.units), list(arch.modules)
  if arch.growth is not None:
    d.growth = arch.growth
  d.norm = 'batch'
  width = arch.widths[0]
  d.net.update(hidden=width, embed=width // 2, depth=layout.DENSE_DEPTH,
               dense_growth=layout.DENSE_GROWTH, num_landmarks=layout.LANDMARKS,
               newton_iters=layout.NEWTON_ITERS, tokens='nchw_reshape')
  d.dequant.update(layout.DEQUANT)
  cfg.data.num_bits = arch.num_bits
  cfg.eval.iw_samples = _IW_SAMPLES.get(name, 200)
  config_lib.validate_run(cfg)
  return cfg


def train_state(trainer, variables: dict):
  """A TrainState at step 0 holding `variables`, with a fresh optimiser state (one
  jitted program: op by op, the optimiser's init compiled a kernel per shape)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from eiw_jax.train.state import TrainState  # pylint: disable=g-import-not-at-top
  seed = trainer.config.train.seed

  def build(params, consts):
    zero = jnp.zeros((), jnp.int32)
    _, rng = jax.random.split(jax.random.key(seed))  # as train_lib.init_state
    return TrainState(step=zero, params=params, consts=consts,
                      opt_state=trainer.optimizer.init(params),
                      ema_params=params if trainer.use_ema else None, rng=rng,
                      nonfinite_streak=zero, nonfinite_total=zero)

  return jax.jit(build)(variables['params'], variables.get('consts', {}))


def _same_structure(state, abstract) -> None:
  """The state has the shapes and dtypes of the run's own (else a converter bug)."""
  import jax  # pylint: disable=g-import-not-at-top
  flat = lambda tree: {jax.tree_util.keystr(p): x for p, x in
                       jax.tree_util.tree_flatten_with_path(tree)[0]}
  ours, theirs = flat(state), flat(abstract)
  for path in sorted(ours.keys() | theirs.keys()):
    a, b = ours.get(path), theirs.get(path)
    if a is None or b is None or a.shape != b.shape or a.dtype != b.dtype:
      describe = lambda x: 'nothing' if x is None else f'{x.dtype}{list(x.shape)}'
      raise RuntimeError(f'converted state at {path} holds {describe(a)}, the model '
                         f'needs {describe(b)}')


def write_run(config, variables: dict, workdir: str, note: dict) -> None:
  """A workdir with config.json and the state at step 0 (see the module docstring)."""
  from eiw_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  from eiw_jax.train import checkpoint  # pylint: disable=g-import-not-at-top
  from eiw_jax.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  if checkpoint.has_checkpoint(workdir):
    raise UserError(f'{workdir} already holds a run; convert into a new workdir')
  workdir_lib.make(workdir)
  trainer = train_lib.Trainer(config)
  state = train_state(trainer, variables)
  _same_structure(state, trainer.abstract_state())
  ckpt = checkpoint.Checkpointer(workdir, max_to_keep=config.train.keep_checkpoints,
                                 config=config)
  try:
    ckpt.save(0, state, force=True)
    ckpt.wait()
  finally:
    ckpt.close()
  with open(os.path.join(workdir, 'converted_from.json'), 'w') as f:
    json.dump(note, f, indent=2, sort_keys=True, default=str)
    f.write('\n')


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 24), b''):
      digest.update(block)
  return digest.hexdigest()


def convert(source: str, workdir: str, dataset=None) -> dict:
  """Converts DenseFlow's run (or checkpoint) `source` into the eiw_jax run `workdir`.
  Returns a summary (architecture, parameter count, epoch)."""
  ckpt_path, args_path = find_files(source)
  args = read_args(args_path)
  dataset = dataset or args.get('dataset')
  if dataset is None:
    raise UserError(f'no args.pickle beside {ckpt_path} to say which dataset it was '
                    f'trained on; pass --dataset (one of {", ".join(SHAPES)})')
  if dataset not in SHAPES:
    raise UserError(f'unknown DenseFlow dataset {dataset!r}; use one of {", ".join(SHAPES)}')
  with torch_checkpoint.Checkpoint(ckpt_path) as ckpt:
    obj = ckpt.obj
    state = obj.get('model') if isinstance(obj, dict) and 'model' in obj else obj
    if not isinstance(state, dict):
      raise UserError(f"{ckpt_path} holds no state dict (DenseFlow's train.py saves it "
                      "under 'model')")
    arch, variables = layout.to_variables(state)
    epoch = obj.get('current_epoch') if isinstance(obj, dict) else None
  check_args(arch, args, args_path)
  config = make_config(arch, _DATA_NAMES.get(dataset, dataset), SHAPES[dataset][0],
                       int(args.get('batch_size') or 64))
  num_params = sum(x.size for x in _leaves(variables['params']))
  note = dict(source=os.path.abspath(ckpt_path), sha256=_sha256(ckpt_path), epoch=epoch,
              denseflow_args={k: v for k, v in args.items()
                               if isinstance(v, (str, int, float, bool, list, type(None)))},
              architecture=arch._asdict(), num_params=num_params)
  write_run(config, variables, workdir, note)
  return note


def _leaves(tree):
  if isinstance(tree, dict):
    for v in tree.values():
      yield from _leaves(v)
  else:
    yield tree


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m eiw_jax.convert.denseflow',
      description="Converts a checkpoint of DenseFlow's PyTorch code into an eiw_jax run.")
  parser.add_argument('source', help="DenseFlow's run directory (args.pickle, "
                      'check/checkpoint.pt) or its checkpoint.pt')
  parser.add_argument('workdir', help='the eiw_jax workdir to create')
  parser.add_argument('--dataset', default=None, choices=sorted(SHAPES),
                      help="DenseFlow's --dataset, when the source has no args.pickle")
  a = parser.parse_args(argv)
  try:
    note = convert(a.source, a.workdir, a.dataset)
  except UserError as e:
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr)
    return 2
  arch = layout.Arch(**note['architecture'])
  print(f"converted DenseFlow ({layout.describe(arch)}; {note['num_params']:,} parameters"
        f"{'' if note['epoch'] is None else ', epoch ' + str(note['epoch'])}) into "
        f'{a.workdir}\nevaluate: python eval.py --workdir={a.workdir} --mode=bpd')
  return 0


if __name__ == '__main__':
  sys.exit(main())
