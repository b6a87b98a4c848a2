"""Bad config values and bad data are refused in one line before the workdir is
created: every row of the catalogue in docs/RELIABILITY.md."""
import os

import numpy as np
import pytest

from eiw_jax import train as train_lib
from eiw_jax.errors import UserError

from helpers import committed, run_config_of, smoke_config


pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


BAD_VALUES = {
    'backbone': ({'model.backbone': 'resnet'},
                 "model.backbone must be 'glow', 'denseflow' or 'ffjord'"),
    'denseflow_without_settings': ({'model.backbone': 'denseflow'},
                                   'needs the model.denseflow settings'),
    'ffjord_without_settings': ({'model.backbone': 'ffjord'}, 'needs the model.ffjord settings'),
    'coupling': ({'model.coupling': 'spline'}, "model.coupling must be 'affine' or 'additive'"),
    'dequantizer': ({'model.dequantizer': 'gaussian'}, 'model.dequantizer must be'),
    'split_prior': ({'model.split_prior': 'learned'}, 'model.split_prior must be'),
    'shuffle_mode': ({'model.shuffle_mode': 'sorted'}, 'model.shuffle_mode must be one of'),
    'kl_units': ({'model.kl_units': 'bits'}, "model.kl_units must be 'nats' or 'bpd'"),
    'solver_input': ({'model.solver_input': 'ones'}, 'model.solver_input must be'),
    'shuffle_statistic': ({'model.shuffle_statistic': 'mean'}, 'model.shuffle_statistic must be'),
    'remat': ({'model.remat': 'all'}, "model.remat must be 'convs', 'spatial_convs' or 'off'"),
    'shuffle_refresh_every': ({'model.shuffle_refresh_every': 0},
                              'model.shuffle_refresh_every must be an integer >= 1'),
    'kl_weight_nan': ({'model.kl_weight': float('nan')}, 'model.kl_weight (lambda) must be >= 0'),
    'dequant_steps': ({'model.dequantizer': 'variational', 'model.dequant_steps': 0},
                      'model.dequant_steps must be an integer >= 1'),
    'dequant_hidden': ({'model.dequantizer': 'variational', 'model.dequant_hidden': -8},
                       'model.dequant_hidden must be an integer >= 1'),
    'hidden_negative': ({'model.hidden': -8}, 'model.hidden must be an integer >= 1'),
    'num_bits_0': ({'data.num_bits': 0}, 'data.num_bits must be in 1..8'),
    'num_bits_9': ({'data.num_bits': 9}, 'data.num_bits must be in 1..8'),
    'channels_0': ({'data.channels': 0}, 'data.channels must be an integer >= 1'),
    'batch_size_0': ({'data.batch_size': 0}, 'data.batch_size must be >= 1'),
    'test_split_smaller_than_batch': ({'data.batch_size': 16, 'data.num_synthetic': 20},
                                      'examples of the test split'),
    'source': ({'data.source': 'ftp'}, 'unknown data source'),
    'dataset_name': ({'data.source': 'auto', 'data.name': 'foo'}, "unknown dataset 'foo'"),
    'optimizer': ({'optim.name': 'sgd'}, "optim.name must be 'adam' or 'adamax'"),
    'lr_inf': ({'optim.lr': float('inf')}, 'optim.lr must be > 0 and finite'),
    'b1': ({'optim.b1': 1.0}, 'optim.b1 must be in [0, 1)'),
    'b2': ({'optim.b2': -0.1}, 'optim.b2 must be in [0, 1)'),
    'warmup_steps': ({'optim.warmup_steps': -1}, 'optim.warmup_steps must be >= 0'),
    'grad_clip': ({'optim.grad_clip': -1.0}, 'optim.grad_clip must be >= 0'),
    'shuffle_optimizer': ({'optim.shuffle_optimizer': 'adam'}, 'optim.shuffle_optimizer must be'),
    'oracle_rate': ({'optim.oracle_rate': 0.0}, 'optim.oracle_rate must be in (0, 1]'),
    'guider_lr': ({'optim.guider_lr': 0.0}, 'optim.guider_lr must be > 0'),
    'shuffle_lr_overshoots': ({'optim.shuffle_lr': 1e6}, "the solver's SGD step overshoots"),
    'num_steps_0': ({'train.num_steps': 0}, 'train.num_steps must be an integer >= 1'),
    'log_every_0': ({'train.log_every': 0}, 'train.log_every must be an integer >= 1'),
    'checkpoint_every_0': ({'train.checkpoint_every': 0}, 'train.checkpoint_every must be'),
    'eval_examples_0': ({'train.eval_examples': 0}, 'train.eval_examples must be'),
    'seed_2_63': ({'train.seed': 2**63}, 'the seed must be an integer in 0..9223372036854775807'),
    'seed_2_64': ({'train.seed': 2**64}, 'the seed must be an integer in 0..'),
    'seed_negative': ({'train.seed': -1}, 'the seed must be an integer in 0..'),
}


@pytest.mark.parametrize('case', sorted(BAD_VALUES))
def test_bad_value_refused_before_the_workdir(case, tmp_path):
  changes, words = BAD_VALUES[case]
  cfg = smoke_config()
  for key, value in changes.items():
    group, name = key.split('.')
    cfg[group][name] = value
  workdir = tmp_path / 'w'
  with pytest.raises(UserError) as e:
    train_lib.train_and_evaluate(cfg, str(workdir))
  assert words in str(e.value) and '\n' not in str(e.value), str(e.value)
  assert not workdir.exists()


@pytest.mark.parametrize('key,value,words', [
    ('model.hidden', 0, 'model.hidden must be an integer >= 1'),
    ('model.num_steps', 0, 'model.num_steps must be an integer >= 1'),
    ('model.shuffle_reduction', 0, 'model.shuffle_reduction must be an integer >= 1'),
    ('model.solver_layers', 0, 'model.solver_layers must be an integer >= 1'),
    ('model.log_scale_bound', 0.0, 'model.log_scale_bound must be > 0'),
    ('data.image_size', 0, 'data.image_size must be an integer >= 1'),
    ('data.num_synthetic', 4, 'data.batch_size=8 exceeds the 4 examples of the train split'),
], ids=['hidden', 'num_steps', 'shuffle_reduction', 'solver_layers', 'log_scale_bound',
        'image_size', 'batch_larger_than_dataset'])


def test_bad_model_values_are_one_line_before_the_workdir(key, value, words, tmp_path):
  workdir = tmp_path / 'w'
  with pytest.raises(UserError) as e:
    train_lib.train_and_evaluate(run_config_of(**{key: value}), str(workdir))
  assert words in str(e.value) and '\n' not in str(e.value), str(e.value)
  assert not workdir.exists()


def _write_idx(path, images):
  header = bytes([0, 0, 0x08, images.ndim]) + np.array(images.shape, '>u4').tobytes()
  with open(path, 'wb') as f:
    f.write(header + images.astype(np.uint8).tobytes())


def _idx_dir(d, test=True):
  d.mkdir()
  images = np.random.default_rng(0).integers(0, 256, (16, 8, 8))
  _write_idx(d / 'train-images-idx3-ubyte', images)
  if test:
    _write_idx(d / 't10k-images-idx3-ubyte', images[:8])
  return d


def _npz_dir(d, images):
  d.mkdir()
  for split in ('train', 'test'):
    np.savez(d / f'{split}.npz', images=images)
  return d


def _data(cfg, d, source, **data_keys):
  cfg.data.update(name='mnist', source=source, dir=str(d), image_size=8, **data_keys)


BAD_INPUT = {
    # case: (edit config (cfg, tmp_path), words the message must hold)
    'image_size': (lambda c, t: c.data.update(image_size=30),
                   ['image_size=30 is not divisible by 4', '--config.model.num_scales']),
    'num_scales': (lambda c, t: c.model.update(num_scales=0),
                   ['num_scales must be >= 1', '--config.model.num_scales']),
    'kl_weight': (lambda c, t: c.model.update(kl_weight=-0.5), ['kl_weight (lambda) must be >= 0']),
    'channels': (lambda c, t: _data(c, _idx_dir(t / 'd'), 'idx', channels=3),
                 ['1 channels but channels=3', '--config.data.channels=1']),
    'dtype': (lambda c, t: _data(c, _npz_dir(t / 'd', np.ones((16, 8, 8, 1), np.float32)), 'npz'),
              ['float32 with values in [1.0, 1.0]', 'expected uint8', 'convert']),
    'empty_file': (lambda c, t: (_data(c, _idx_dir(t / 'd'), 'idx'),
                                 open(t / 'd' / 'train-images-idx3-ubyte', 'w').close()),
                   ['not an IDX file', 're-download']),
    'truncated_file': (lambda c, t: (_data(c, _idx_dir(t / 'd'), 'idx'),
                                     os.truncate(t / 'd' / 'train-images-idx3-ubyte', 500)),
                       ['truncated or corrupt', 're-download']),
    'corrupt_npz': (lambda c, t: (_data(c, _npz_dir(t / 'd', np.zeros((16, 8, 8, 1), np.uint8)),
                                        'npz'), open(t / 'd' / 'train.npz', 'wb').write(b'x' * 99)),
                    ['train.npz', 'fix the file']),
    'missing_test_split': (lambda c, t: _data(c, _idx_dir(t / 'd', test=False), 'idx'),
                           ['no t10k-images-idx3-ubyte', '--config.data.dir']),
    'missing_dataset': (lambda c, t: _data(c, t / 'nowhere', 'auto'),
                        ['does not exist', '--config.data.dir']),
    'unknown_key': (lambda c, t: c.train.update(max_nonfinite=3),
                    ['unknown config key train.max_nonfinite', 'train.max_nonfinite_steps']),
    'max_nonfinite_steps': (lambda c, t: c.train.update(max_nonfinite_steps=0),
                            ['train.max_nonfinite_steps must be an integer >= 1']),
    'keep_checkpoints': (lambda c, t: c.train.update(keep_checkpoints=0),
                         ['train.keep_checkpoints must be']),
    'lr': (lambda c, t: c.optim.update(lr=-1.0), ['optim.lr must be > 0', '--config.optim.lr']),
    'ema_decay': (lambda c, t: c.optim.update(ema_decay=1.0), ['optim.ema_decay must be in [0, 1)']),
    'compute_dtype': (lambda c, t: c.model.update(compute_dtype='float16'),
                      ["model.compute_dtype must be 'float32' or 'bfloat16'"]),
    'coordinator_alone': (lambda c, t: c.train.update(distributed=True,
                                                      coordinator_address='localhost:1234'),
                          ['go together', '--config.train.num_processes=2']),
    'process_id': (lambda c, t: c.train.update(distributed=True, coordinator_address='h:1',
                                               num_processes=2, process_id=2),
                   ['train.process_id=2 must be below train.num_processes=2']),
}


@pytest.mark.parametrize('case', sorted(BAD_INPUT))
def test_bad_input_is_one_line_and_writes_nothing(case, tmp_path):
  edit, words = BAD_INPUT[case]
  cfg = smoke_config()
  edit(cfg, tmp_path)
  workdir = tmp_path / 'w'
  with pytest.raises(UserError) as e:
    train_lib.train_and_evaluate(cfg, str(workdir))
  msg = str(e.value)
  assert '\n' not in msg and all(w in msg for w in words), msg
  assert not workdir.exists()


def test_the_largest_seed_trains(copy, no_eval):
  cfg = run_config_of()
  cfg.train.update(seed=2**63 - 1, num_steps=3)
  train_lib.train_and_evaluate(cfg, copy)
  assert committed(copy)[-1] == 3
