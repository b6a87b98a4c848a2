"""bench.py end to end on the smoke config: the keys it writes, the peer ratio,
and the start-up measured cold and with the compilation cache warm."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bench_writes_start_up_memory_and_the_peer_ratio(tmp_path):
  peer = tmp_path / 'peer.json'
  peer.write_text('setting up...\n{"images_per_s": 0.5, "step_s_median": 16.0}\n')
  out = tmp_path / 'bench.json'
  proc = subprocess.run(
      [sys.executable, 'bench.py', '--config=configs/fashion_mnist.py:smoke',
       '--config.data.source=synthetic', '--only=eiw', '--steps=1', '--rounds=1', '--nosample',
       '--noflops', f'--json={out}', f'--peer_json={peer}'],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(out.read_text())['eiw']
  for key in ('train_images_per_s', 'compile_s', 'in_process_init_s', 'init_s', 'first_step_s',
              'peak_rss_bytes', 'cached_compile_s', 'cached_first_step_s'):
    assert result[key] > 0, key
  assert result['first_step_s'] > result['init_s'] + result['compile_s']
  assert result['peak_rss_bytes'] > 50e6  # a process that imported JAX and ran a step
  # The second fresh process finds the first one's programs in the cache.
  assert result['cached_compile_s'] < 0.5 * result['compile_s']
  whole = json.loads(out.read_text())
  assert abs(whole['peer_ratio'] - result['train_images_per_s'] / 0.5) < 1e-9

  bad = tmp_path / 'bad.json'
  bad.write_text('no json here\n')
  proc = subprocess.run(
      [sys.executable, 'bench.py', '--config=configs/fashion_mnist.py:smoke',
       f'--peer_json={bad}', f'--json={tmp_path / "never.json"}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and proc.stderr.count('\n') == 1, proc.stderr
  assert 'not the JSON line of bench_denseflow.py' in proc.stderr
  assert not (tmp_path / 'never.json').exists()


def test_peak_rss_of_a_child_is_its_own_not_its_parents():
  """A child started by a large process reports its own peak (ru_maxrss would give
  the parent's, which is how every fresh-process number of one run came out equal)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  ballast = np.ones(400 * 2**20 // 8)  # 400 MiB, touched
  code = 'from benchmarks import bench_lib; print(bench_lib.peak_rss_bytes())'
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, check=True)
  assert int(out.stdout.split()[-1]) < 350 * 2**20 and ballast.sum() > 0
