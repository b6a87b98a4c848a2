"""The catalogue of bad inputs and faults in docs/RELIABILITY.md: each row is a
test here (or in test_reliability.py). Cheap: config values are refused before
anything is compiled, and checkpoint faults use a small pytree state."""
import json
import os
import sys

import jax.numpy as jnp
import pytest
from absl import flags
from ml_collections import config_flags

from eiw_jax.train import checksums, runs, monitor as train_monitor
from eiw_jax import train as train_lib
from eiw_jax import cli
from eiw_jax.train import workdir as workdir_lib
from eiw_jax.train.checkpoint import Checkpointer
from eiw_jax.errors import UserError

from test_robustness import ROOT, smoke_config

pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')

# id: (dotted key -> value, words the one-line message must hold)
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


# ------------------------------------------------------ checkpoint faults


def _state(seed):
  return {'w': jnp.arange(12.0).reshape(3, 4) * seed, 'step': jnp.int32(seed)}


@pytest.fixture
def saved(tmp_path):
  """A workdir with committed (and checksummed) steps 1 and 2 of a small state."""
  workdir = str(tmp_path / 'w')
  with Checkpointer(workdir) as ckpt:
    for s in (1, 2):
      ckpt.save(s, _state(s))
  return workdir


def _step_dir(workdir, step):
  return os.path.join(workdir, 'checkpoints', str(step))


def _restore(workdir, **kwargs):
  with Checkpointer(workdir, max_to_keep=None) as ckpt:
    return ckpt.restore(_state(0), **kwargs)


def test_checksums_written_for_every_committed_step(saved):
  table = json.load(open(os.path.join(_step_dir(saved, 2), checksums.FILENAME)))
  assert 'commit_success.txt' in table and any('/d/' in k for k in table)


def test_step_without_checksums_restores_unverified(saved):
  os.remove(os.path.join(_step_dir(saved, 2), checksums.FILENAME))  # saved by older code
  state, step = _restore(saved)
  assert step == 2 and int(state['step']) == 2


def test_unreadable_checksum_file_falls_back(saved, capsys):
  with open(os.path.join(_step_dir(saved, 2), checksums.FILENAME), 'w') as f:
    f.write('[1, 2')
  assert _restore(saved)[1] == 1
  assert 'checksums.json is unreadable' in capsys.readouterr().err


def test_missing_data_file_falls_back(saved, capsys):
  table = json.load(open(os.path.join(_step_dir(saved, 2), checksums.FILENAME)))
  os.remove(os.path.join(_step_dir(saved, 2), next(k for k in sorted(table) if '/d/' in k)))
  assert _restore(saved)[1] == 1
  assert 'checksum mismatch' in capsys.readouterr().err


def test_grown_data_file_falls_back(saved, capsys):
  table = json.load(open(os.path.join(_step_dir(saved, 2), checksums.FILENAME)))
  with open(os.path.join(_step_dir(saved, 2), next(k for k in sorted(table) if '/d/' in k)),
            'ab') as f:
    f.write(b'\0')
  assert _restore(saved)[1] == 1
  assert 'bytes,' in capsys.readouterr().err


def test_explicit_damaged_step_is_an_error_not_a_fallback(saved):
  _flip_first_data_byte(saved, 2)
  with pytest.raises(UserError, match=r'step 2 .* is unreadable .*committed: \[1, 2\]'):
    _restore(saved, step=2)


def _flip_first_data_byte(workdir, step):
  table = json.load(open(os.path.join(_step_dir(workdir, step), checksums.FILENAME)))
  path = os.path.join(_step_dir(workdir, step), next(k for k in sorted(table) if '/d/' in k))
  data = bytearray(open(path, 'rb').read())
  data[len(data) // 2] ^= 1
  open(path, 'wb').write(bytes(data))


def test_stray_files_in_checkpoints_are_ignored(saved):
  open(os.path.join(saved, 'checkpoints', 'notes.txt'), 'w').close()
  os.makedirs(os.path.join(saved, 'checkpoints', 'latest'))
  os.makedirs(os.path.join(saved, 'checkpoints', '07'))  # not a step name orbax writes
  state, step = _restore(saved)
  assert step == 2 and int(state['step']) == 2


def test_same_step_damaged_twice_keeps_both_copies(saved):
  for n in (1, 2):
    _flip_first_data_byte(saved, 2)
    assert _restore(saved)[1] == 1
    with Checkpointer(saved) as ckpt:  # the run goes on and saves step 2 again
      ckpt.save(2, _state(2))
  assert sorted(os.listdir(os.path.join(saved, 'corrupt_checkpoints'))) == ['2-1', '2-2']


def test_read_only_checkpointer_never_creates_directories(tmp_path):
  workdir = tmp_path / 'w'
  with Checkpointer(str(workdir), read_only=True) as ckpt:
    assert ckpt.restore(_state(0)) is None
  assert not workdir.exists()


def test_workdir_path_with_spaces_and_unicode(tmp_path):
  workdir = str(tmp_path / 'my runs' / 'über 1')
  with Checkpointer(workdir) as ckpt:
    ckpt.save(3, _state(3))
  assert _restore(workdir)[1] == 3


def test_config_json_that_is_a_directory(tmp_path):
  workdir = tmp_path / 'w'
  (workdir / 'config.json').mkdir(parents=True)
  with pytest.raises(UserError, match='config.json is unreadable'):
    train_lib.train_and_evaluate(smoke_config(), str(workdir))


def test_saved_config_that_is_not_an_object(tmp_path):
  (tmp_path / 'config.json').write_text('[1, 2, 3]')
  with pytest.raises(UserError, match='config.json is unreadable'):
    runs.saved_config(str(tmp_path))


def test_eval_of_a_workdir_that_is_a_file(tmp_path):
  (tmp_path / 'f').write_text('x')
  with pytest.raises(UserError, match='no checkpoint in'):
    runs.load_for_eval(smoke_config(), str(tmp_path / 'f'))
  assert (tmp_path / 'f').read_text() == 'x'


# ----------------------------------------------------------- the lock


def test_stale_lock_file_with_garbage_is_taken_over(tmp_path):
  (tmp_path / workdir_lib.FILENAME).write_bytes(b'\xff\x00garbage')  # a killed holder's
  with workdir_lib.Lock(str(tmp_path)) as lock:
    assert open(lock.path).read().startswith(f'pid {os.getpid()} on host ')
  assert not (tmp_path / workdir_lib.FILENAME).exists()


def test_lock_released_after_a_failed_run(tmp_path):
  cfg = smoke_config()
  cfg.data.update(source='npz', dir=str(tmp_path / 'nowhere'))
  (tmp_path / 'w').mkdir()
  with pytest.raises(UserError):
    train_lib.train_and_evaluate(cfg, str(tmp_path / 'w'))
  with workdir_lib.Lock(str(tmp_path / 'w')):
    pass


# -------------------------------------------------------------- metrics


def test_metrics_with_crlf_and_blank_lines_read_whole(tmp_path, capsys):
  path = tmp_path / 'metrics.jsonl'
  path.write_bytes(b'{"step": 1, "bpd": 5.0}\r\n\r\n\n{"step": 2, "bpd": 4.0}\r\n')
  train_monitor._truncate_metrics(str(path), 2)
  assert [json.loads(l)['step'] for l in path.read_text().splitlines()] == [1, 2]
  assert not capsys.readouterr().err


def test_metrics_with_invalid_utf8_recovered(tmp_path, capsys):
  path = tmp_path / 'metrics.jsonl'
  path.write_bytes(b'{"step": 1, "bpd": 5.0}\n\xff\xfe\x80{"step": 2, "bpd": 4.0}\n')
  train_monitor._truncate_metrics(str(path), 9)
  assert [json.loads(l)['step'] for l in path.read_text().splitlines()] == [1, 2]
  assert 'damaged' in capsys.readouterr().err


def test_metrics_record_without_step_is_set_aside(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1}\n{"bpd": 4.0}\n{"step": "2"}\n')
  train_monitor._truncate_metrics(str(path), 9)
  assert path.read_text() == '{"step": 1}\n'
  assert os.path.exists(f'{path}.damaged-1')


# ------------------------------------------------------ command line


def _parse(argv, monkeypatch):
  monkeypatch.chdir(ROOT)
  monkeypatch.setattr(sys, 'argv', argv)
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=fv, lock_config=True)
  flags.DEFINE_string('workdir', None, '', flag_values=fv)
  flags.mark_flags_as_required(['config', 'workdir'], flag_values=fv)
  with pytest.raises(SystemExit) as e:
    cli.parse_flags(argv, fv)
  assert e.value.code == 2
  return e


@pytest.mark.parametrize('args,words', [
    (['--config=configs/fashion_mnist.py:smoke'], 'workdir'),
    (['--config=configs/fashion_mnist.py:smoke', '--workdir=w', '--config.optim.lr=fast'],
     'optim.lr'),
    (['--config=configs/fashion_mnist.py:smoke', '--workdir=w', '--config.optim.lr.x=1'],
     'optim.lr.x'),
], ids=['missing_workdir', 'float_not_a_number', 'key_below_a_leaf'])
def test_command_line_mistakes_are_one_line_exit_2(args, words, monkeypatch, capsys):
  _parse(['train.py', *args], monkeypatch)
  err = capsys.readouterr().err
  assert err.startswith('error: ') and err.count('\n') == 1 and words in err, err


def test_user_error_becomes_one_line_and_exit_2(monkeypatch, capsys):
  def main(argv):
    raise UserError('bad thing;\n  fix it')

  monkeypatch.setattr(sys, 'argv', ['train.py'])
  with pytest.raises(SystemExit) as e:
    cli.run_main(main)
  assert e.value.code == 2 and capsys.readouterr().err == 'error: bad thing; fix it\n'
