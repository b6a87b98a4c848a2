"""metrics.jsonl (train/monitor.py): torn, damaged or odd records are recovered and
kept, whole ones rewritten silently."""
import json
import os

import pytest

from eiw_jax.train import monitor as train_monitor



pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


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


def test_torn_metrics_are_recovered_and_kept(tmp_path, capsys):
  path = tmp_path / 'metrics.jsonl'
  text = ('{"step": 1, "bpd": 5.0}\n{"step": 2, "bp{"step": 3, "bpd": 4.0}\n'
          '{"step": 4, "bpd": 3.5}{"step": 5, "bpd": 3.0}\n\x00\x00\x00\n{"step": 6, "b')
  path.write_text(text)
  train_monitor._truncate_metrics(str(path), 5)
  kept = [json.loads(l)['step'] for l in path.read_text().splitlines()]
  assert kept == [1, 3, 4, 5]
  assert (tmp_path / 'metrics.jsonl.damaged-1').read_text() == text
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'unreadable fragment' in err and 'damaged-1' in err


def test_whole_metrics_are_rewritten_silently(tmp_path, capsys):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "bpd": 5.0}\n{"step": 2, "bpd": 4.0}\n')
  train_monitor._truncate_metrics(str(path), 1)
  assert path.read_text() == '{"step": 1, "bpd": 5.0}\n'
  assert not capsys.readouterr().err and os.listdir(tmp_path) == ['metrics.jsonl']
