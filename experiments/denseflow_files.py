"""The small PyTorch files of tests/test_convert_denseflow.py, written by PyTorch and
DenseFlow's own code (see `write_files`).

    DENSEFLOW_SRC=<clone of DenseFlow> python experiments/denseflow_files.py --out=tests/fixtures
"""
from __future__ import annotations

import argparse
import collections
import gzip
import io
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=g-import-not-at-top,wrong-import-position
from denseflow_reference import _KEPT  # puts DenseFlow's clone on sys.path
import torch
from model.model_flow import get_model
from denseflow.optim.schedulers import LinearWarmupScheduler


def write_files(directory: str) -> None:
  """Files of PyTorch's own format for tests/test_convert_denseflow.py, small by design:

  denseflow_tiny_run/: a run directory as DenseFlow's train.py leaves it (args.pickle,
    check/checkpoint.pt, gzipped here) for a tiny model (2 scales, units 2 1, modules
    1 1, width 8, growth 2, CIFAR-10's arguments), every parameter and running
    average constant (a function of its index, so the file compresses; the fixed
    buffers keep DenseFlow's values), with an Adamax state after one step and both
    schedulers' states, as its BaseExperiment.checkpoint_save writes them.
  torch_views.pt: tensors that share, offset and stride their storages, in several dtypes.
  """
  run = os.path.join(directory, 'denseflow_tiny_run')
  os.makedirs(os.path.join(run, 'check'), exist_ok=True)
  args = argparse.Namespace(
      epochs=400, seed=0, device='cuda', parallel=None, resume=None, name='tiny',
      project='cifar10_8bit_densenet-flow', eval_every=1, check_every=10, log_tb=False,
      log_wandb=False, dataset='cifar10', num_bits=8, batch_size=64, num_workers=4,
      pin_memory=True, augmentation='eta', num_classes=10, growth_rate=2, checkpointing=False,
      block_conf=[2, 1], layer_mid_chnls=[8, 8], layers_conf=[1, 1], optimizer='adamax',
      lr=1e-3, warmup=5000, momentum=0.9, momentum_sqr=0.999, gamma=0.9975, use_grad_norm=0.0)
  with open(os.path.join(run, 'args.pickle'), 'wb') as f:
    pickle.dump(args, f)
  model = get_model(args, data_shape=(3, 32, 32))
  with torch.no_grad():
    for i, (name, t) in enumerate(model.state_dict().items()):
      if name.endswith('initialized'):
        t.fill_(1)                          # ActNorm set up, as in any trained model
      elif t.is_floating_point() and not name.endswith(_KEPT):
        t.fill_((i % 97 + 1) / 64)          # exact in float32
  optimizer = torch.optim.Adamax(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
  warmup = LinearWarmupScheduler(optimizer, total_epoch=5000)
  decay = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9975)
  for q in model.parameters():
    q.grad = torch.ones_like(q)
  optimizer.step()
  warmup.step()
  checkpoint = {'current_epoch': 10, 'train_metrics': {'bpd': [3.5, 3.4]},
                'eval_metrics': {'bpd': [3.45]}, 'eval_epochs': [9],
                'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                'scheduler_iter': warmup.state_dict(), 'scheduler_epoch': decay.state_dict()}
  buffer = io.BytesIO()
  torch.save(checkpoint, buffer)
  with gzip.open(os.path.join(run, 'check', 'checkpoint.pt.gz'), 'wb', compresslevel=9) as f:
    f.write(buffer.getvalue())
  a = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  views = collections.OrderedDict(
      a=a, transposed=a.t(), offset=a[1:, 2:], strided=a[:, ::2], shared=a.view(6, 4),
      half=torch.arange(5, dtype=torch.float16) / 4, bf16=torch.arange(3, dtype=torch.bfloat16),
      long=torch.tensor(7), boolean=torch.tensor([True, False]), empty=torch.zeros(0, 3),
      parameter=torch.nn.Parameter(torch.ones(2)))
  torch.save({'views': views, 'args': argparse.Namespace(x=1)}, os.path.join(directory,
                                                                            'torch_views.pt'))
  for name in ('denseflow_tiny_run/args.pickle', 'denseflow_tiny_run/check/checkpoint.pt.gz',
               'torch_views.pt'):
    print(f'wrote {os.path.join(directory, name)} '
          f'({os.path.getsize(os.path.join(directory, name)):,} bytes)')


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--out', default='tests/fixtures', help='the directory to write to')
  write_files(p.parse_args().out)


if __name__ == '__main__':
  main()
