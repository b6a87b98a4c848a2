"""The device check (benchmarks/device_check.py): its table from a report, its refusal
when a package is missing, and a tiny run of it end to end on the CPU."""
import json
import os
import subprocess
import sys

import pytest

from benchmarks import device_check, device_report

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _report():
  start = dict(status='ok', seconds=60.0, init_s=20.0, compile_s=30.0, first_step_s=52.0,
               peak_rss_bytes=4.2e9, device_peak_bytes=None)
  model = lambda step_s, loss: dict(step_s=step_s, images_per_s=64 / step_s, round_step_s=[step_s],
                                    peak_memory_bytes=16e9, first_loss=9.0, trained_loss=loss)
  return dict(
      schema=1, started='2026-12-06T00:00:00+00:00', command='python -m benchmarks.device_check',
      options=dict(batch=64, autotune_level='0'), machine=dict(device_kind='H100', jax='0.12.0.1'),
      phases=dict(
          tests=dict(status='failed', seconds=90.0, passed=20, failed=1, error=0, skipped=0,
                     not_passed=['tests/x.py::t FAILED']),
          cold=start, warm=dict(start, first_step_s=12.0),
          paper=dict(status='ok', eiw=model(0.4, 3.5), vanilla=model(0.39, 3.6),
                     eiw_bf16=model(0.25, 3.51), eiw_step_time_over_vanilla=0.4 / 0.39,
                     bf16_speedup=1.6, bf16_loss_minus_float32=0.01, trained_steps=16,
                     device_peak_bytes=30e9),
          two=dict(status='skipped', reason='1 device'),
          peer=dict(status='ok', images_per_s=40.0, batch=64),
          autotune=dict(status='timeout', seconds=400.0)))


def test_the_table_has_a_row_per_measurement_and_the_ratios_across_phases(tmp_path):
  report = _report()
  device_report.write(report, str(tmp_path))
  saved = json.loads((tmp_path / 'device_check.json').read_text())
  assert saved['derived']['eiw_over_peer_images_per_s'] == pytest.approx(160 / 40)
  assert 'short_compile_step_over_autotuned' not in saved['derived']  # autotune timed out
  table = (tmp_path / 'device_check.md').read_text()
  rows = [l for l in table.splitlines() if l.startswith('| ') and not l.startswith('| what')]
  assert len(rows) == len(device_report.rows(report)) == 12
  assert 'tests/x.py::t FAILED' in table and '| failed |' in table
  assert '52.0 s to the end of the first step' in table and '12.0 s' in table
  assert '160.0 images/s' in table and 'EIW / peer 4' in table
  assert '1.600x; +0.01 nats' in table and '| 1 device | skipped |' in table
  assert table.rstrip().endswith('| timeout |')


def test_a_missing_package_is_named_and_nothing_runs(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(device_check, 'NEEDED', ('jax', 'no_such_package_here'))
  assert device_check.main([f'--out={tmp_path}']) == 1
  saved = json.loads((tmp_path / 'device_check.json').read_text())
  assert saved['missing_packages'] == ['no_such_package_here'] and saved['phases'] == {}
  assert 'no_such_package_here' in capsys.readouterr().err
  assert 'Not run' in (tmp_path / 'device_check.md').read_text()


@pytest.mark.slow
def test_a_smoke_run_on_the_cpu_writes_every_phase(tmp_path):
  peer = 'echo "{\\"images_per_s\\": 2.0, \\"batch\\": 8}"'
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.device_check', '--smoke', f'--out={tmp_path}',
       '--deadline_s=1500', f'--peer_cmd={peer}'],
      cwd=ROOT, capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  report = json.loads((tmp_path / 'device_check.json').read_text())
  phases = report['phases']
  assert list(phases) == list(device_check.PHASES)
  assert phases['tests']['passed'] > 0 and phases['tests']['failed'] == 0
  assert phases['two'] == dict(status='skipped', reason='1 device')
  for name in ('cold', 'warm', 'paper', 'peer', 'autotune'):
    assert phases[name]['status'] == 'ok', (name, phases[name])
  cold, warm = phases['cold'], phases['warm']
  assert cold['first_step_s'] > cold['init_s'] + cold['compile_s'] > 0
  assert warm['compile_s'] < 0.5 * cold['compile_s']  # the cold start filled the cache
  assert '--xla_gpu_autotune_level=0' in cold['xla_flags'] and not phases['autotune']['xla_flags']
  paper = phases['paper']
  for name in ('eiw', 'vanilla', 'eiw_bf16'):
    assert paper[name]['images_per_s'] > 0 and paper[name]['peak_memory_bytes'] > 0
  assert paper['eiw']['params'] > paper['vanilla']['params']  # the Shuffle's solver and guider
  assert paper['bf16_loss_minus_float32'] != 0  # the conditioners ran in bfloat16
  assert report['derived']['eiw_over_peer_images_per_s'] == pytest.approx(
      paper['eiw']['images_per_s'] / 2.0)
  assert report['machine']['backend'] == 'cpu' and report['machine']['jax']
  assert 'EIW / vanilla step time' in proc.stdout  # the table, printed
