"""The command line (eiw_jax/cli.py, train.py, eval.py): flag and config mistakes
are one line on stderr and exit code 2."""
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from eiw_jax import cli
from eiw_jax.errors import UserError

from helpers import ROOT


pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


SMOKE = '--config=configs/fashion_mnist.py:smoke'


@pytest.mark.parametrize('args,words', [
    ((SMOKE, '--config.modle.hidden=8'), ['unknown config key modle.hidden', '--config.model.hidden']),
    ((SMOKE, '--config.train.max_nonfinite=1'), ['did you mean --config.train.max_nonfinite_steps']),
    ((SMOKE, '--config.model.num_scales=two'), ['num_scales=two is not a valid int']),
    ((SMOKE, '--workdirr=/tmp/x'), ['workdirr']),
    (('--config=configs/fashion_mnst.py',), ['fashion_mnst.py']),
    (('--config=configs/fashion_mnist.py:smok',), ['smok', ':smoke']),
])


def test_flag_typos_are_one_line_exit_2(args, words, monkeypatch, capsys):
  monkeypatch.chdir(ROOT)
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=fv, lock_config=True)
  flags.DEFINE_string('workdir', None, '', flag_values=fv)
  with pytest.raises(SystemExit) as e:
    cli.parse_flags(['train.py', '--workdir=/tmp/x', *args], fv)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and err.startswith('error: ')
  assert all(w in err for w in words), err


def _eval_flags(argv, monkeypatch, required=()):
  """Parses argv as eval.py does (--config optional; train.py: `required` both); returns
  the FlagValues."""
  monkeypatch.chdir(ROOT)
  monkeypatch.setattr(sys, 'argv', argv)
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=fv, lock_config=True)
  flags.DEFINE_string('workdir', None, '', flag_values=fv)
  if required:
    flags.mark_flags_as_required(list(required), flag_values=fv)
  cli.parse_flags(argv, fv)
  return fv


def _parse(argv, monkeypatch):
  with pytest.raises(SystemExit) as e:
    _eval_flags(argv, monkeypatch, required=('config', 'workdir'))
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


@pytest.mark.parametrize('override,words', [
    ('--config.optim.lrr=1', 'unknown config key optim.lrr; did you mean --config.optim.lr?'),
    ('--config.lrr=1', 'unknown config key lrr; did you mean --config.optim.lr?'),
    ('--config.foo=1', 'unknown config key foo; check the key against --config'),
], ids=['typo_in_a_group', 'group_left_out', 'unknown_top_level'])


def test_unknown_override_keys_are_named(override, words, monkeypatch, capsys):
  monkeypatch.chdir(ROOT)
  argv = ['train.py', '--config=configs/fashion_mnist.py:smoke', '--workdir=/tmp/x', override]
  monkeypatch.setattr(sys, 'argv', argv)  # as train.py sees it: overrides pre-registered
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=fv, lock_config=True)
  flags.DEFINE_string('workdir', None, '', flag_values=fv)
  with pytest.raises(SystemExit) as e:
    cli.parse_flags(argv, fv)
  assert e.value.code == 2
  assert capsys.readouterr().err == f'error: {words}\n'


@pytest.mark.parametrize('source,words', [
    ('def get_config(:\n  pass\n',
     'bad.py, line 1: invalid syntax (SyntaxError); fix the config file'),
    ('def get_config():\n  return undefined_name\n',
     "bad.py, line 2: NameError: name undefined_name is not defined"),
    ('import no_such_module\n', "bad.py, line 1: ModuleNotFoundError: No module named"),
], ids=['syntax_error', 'name_error', 'import_error'])
def test_a_config_file_that_does_not_run_is_one_line(source, words, tmp_path, monkeypatch,
                                                     capsys):
  (tmp_path / 'bad.py').write_text(source)
  with pytest.raises(SystemExit) as e:
    _eval_flags(['train.py', f'--config={tmp_path / "bad.py"}', '--workdir=w'], monkeypatch)
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.count('\n') == 1 and err.startswith('error: ')
  assert words in err.replace("'", ''), err


def test_eval_overrides_without_config_name_the_fix(monkeypatch, capsys):
  with pytest.raises(SystemExit) as e:
    _eval_flags(['eval.py', '--workdir=w', '--config.model.hidden=16'], monkeypatch)
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.count('\n') == 1
  assert err.startswith('error: --config.model.hidden overrides a key of --config, which is '
                        'not given; pass the config too') and 'configs/saved.py:<workdir>' in err


@pytest.mark.parametrize('value,want', [
    ('0.5,0.7', [0.5, 0.7]), ('[0.5, 0.7]', [0.5, 0.7]), ('(1.0,)', [1.0]), ('0.9', [0.9])])
def test_list_keys_can_be_overridden(value, want, monkeypatch):
  fv = _eval_flags(['eval.py', SMOKE, f'--config.eval.temperatures={value}'], monkeypatch)
  assert fv.config.eval.temperatures == want


def test_overrides_on_a_runs_saved_config(tmp_path, monkeypatch, capsys):
  from eiw_jax.train import run_config  # pylint: disable=g-import-not-at-top
  from helpers import smoke_config  # pylint: disable=g-import-not-at-top
  (tmp_path / 'config.json').write_text(run_config.config_to_json(smoke_config()))
  fv = _eval_flags(['eval.py', f'--config=configs/saved.py:{tmp_path}',
                    '--config.eval.temperatures=0.5', '--config.model.hidden=16'], monkeypatch)
  assert fv.config.eval.temperatures == [0.5] and fv.config.model.hidden == 16
  assert fv.config.data.source == 'synthetic'  # the rest as saved
  with pytest.raises(SystemExit):  # a workdir without one: one line
    _eval_flags(['eval.py', f'--config=configs/saved.py:{tmp_path / "none"}'], monkeypatch)
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'no config given and none saved in' in err, err
