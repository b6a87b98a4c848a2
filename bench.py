"""Benchmark the EIW model against the vanilla model of the same config:

  python bench.py --config=configs/fashion_mnist.py:small --json=bench.json
  python bench.py --config=configs/fashion_mnist.py:small --devices=1,2,4,8 --invertible_depths=6,24
  python bench.py --config=configs/cifar10.py --only=eiw --invertible_batches=8,16,32 ...
  python bench.py --config=configs/cifar10.py --config.data.batch_size=8 --steps=1 --rounds=5 \
      --nosample --noflops --json=paper.json --peer_json=peer.json

Prints a table and writes JSON (keys per model: train_images_per_s,
sample_images_per_s, compile_s, peak_memory_bytes, flops_per_step, and from a
fresh process per model: init_s, first_step_s, peak_rss_bytes, and the same with
a warm compilation cache as cached_*). --peer_json takes the JSON line that
../shared/peer/bench_denseflow.py prints (DenseFlow's PyTorch code) and adds
peer_ratio: EIW's training images/s over the peer's.
"""
import json
import os
import platform
import sys

from absl import flags
from ml_collections import config_flags

from eiw_jax import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_JSON = flags.DEFINE_string('json', None, 'Write the results here as JSON.')
_ONLY = flags.DEFINE_enum('only', None, ['eiw', 'vanilla'], 'Benchmark one model only.')
_ROUNDS = flags.DEFINE_integer('rounds', 7, 'Interleaved timing rounds.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Training steps per round.')
_FLOPS = flags.DEFINE_bool('flops', True, 'Count FLOPs (one extra, unrolled compile).')
_PEAK = flags.DEFINE_float('peak_gflops', 0.0, 'The machine\'s fp32 peak, for the fraction.')
_DEVICES = flags.DEFINE_list('devices', [], 'Also time the step at these simulated CPU device counts.')
_DEPTHS = flags.DEFINE_list('invertible_depths', [], 'Also compare peak memory at these depths N.')
_BATCHES = flags.DEFINE_list('invertible_batches', [],
                             'Also compare peak memory at these batch sizes.')
_SAMPLE = flags.DEFINE_bool('sample', True, 'Also time sampling.')
_COLD = flags.DEFINE_bool('cold', True, 'Also time the start-up in a fresh process per model.')
_FIRST = flags.DEFINE_bool('first_step_only', False, 'Only time the start-up, in this process.')
_PEER = flags.DEFINE_string('peer_json', None, "The peer's JSON line (images_per_s).")
flags.mark_flags_as_required(['config'])


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import bench_lib  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  names = (_ONLY.value,) if _ONLY.value else ('eiw', 'vanilla')
  log = lambda m: print(m, file=sys.stderr)
  if _FIRST.value:
    result = {n: bench_lib.first_step(bench_lib.variant(config, shuffle=n == 'eiw')) for n in names}
    with open(_JSON.value, 'w') as f:
      json.dump(result, f)
    return
  peer = _read_peer(_PEER.value) if _PEER.value else None
  result = bench_lib.compare(config, names=names, rounds=_ROUNDS.value, steps=_STEPS.value,
                             peak_flops=_PEAK.value * 1e9, count_flops=_FLOPS.value,
                             sample=_SAMPLE.value, log=log)
  if _COLD.value:
    base = [a for a in sys.argv if not a.startswith(_OWN_FLAGS)]
    for name, start in bench_lib.cold_start(base, names).items():
      result[name].update(start)
  if peer is not None:
    result['peer'] = peer
    result['peer_ratio'] = result[names[0]]['train_images_per_s'] / peer['images_per_s']
  result['machine'] = dict(platform=platform.platform(), processor=platform.processor(),
                           devices=[str(d) for d in jax.devices()],
                           backend=jax.default_backend(), jax=jax.__version__)
  if _DEPTHS.value:
    result['invertible_memory'] = bench_lib.invertible_memory(
        config, tuple(int(n) for n in _DEPTHS.value))
  if _BATCHES.value:
    result['invertible_memory_by_batch'] = bench_lib.invertible_memory_by_batch(
        config, tuple(int(b) for b in _BATCHES.value))
  if _DEVICES.value:
    base = [a for a in sys.argv if not a.startswith(_OWN_FLAGS)]
    result['device_scaling_step_s'] = bench_lib.device_scaling(base, [int(n) for n in _DEVICES.value])
  print(f'{"":24s}' + ''.join(f'{n:>16s}' for n in names))
  for key in ('train_images_per_s', 'sample_images_per_s', 'compile_s', 'peak_memory_bytes',
              'flops_per_step', 'achieved_flops_per_s', 'params', 'in_process_init_s', 'init_s',
              'first_step_s', 'peak_rss_bytes', 'cached_first_step_s'):
    if key in result[names[0]]:
      print(f'{key:24s}' + ''.join(f'{result[n][key]:16.4g}' for n in names))
  if 'peer_ratio' in result:
    print(f'{names[0]} images/s over the peer\'s: {result["peer_ratio"]:.3f}')
  if 'eiw_step_time_over_vanilla' in result:
    print(f'EIW step time / vanilla step time: {result["eiw_step_time_over_vanilla"]:.4f}')
  for key in ('invertible_memory', 'invertible_memory_by_batch', 'device_scaling_step_s'):
    if key in result:
      print(f'{key}: {json.dumps(result[key])}')
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(result, f, indent=2)


# Flags a child process must not inherit (bench_lib.cold_start, device_scaling).
_OWN_FLAGS = ('--devices', '--invertible_depths', '--invertible_batches', '--json', '--only',
              '--peer_json', '--cold', '--nocold', '--first_step_only', '--compilation_cache')


def _read_peer(path: str) -> dict:
  """The last JSON line of the peer harness's output, checked for images_per_s."""
  from eiw_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  try:
    with open(os.path.expanduser(path)) as f:
      lines = [l for l in f.read().splitlines() if l.strip().startswith('{')]
    peer = json.loads(lines[-1])
    float(peer['images_per_s'])
  except (OSError, IndexError, ValueError, KeyError, TypeError) as e:
    raise UserError(f'--peer_json={path}: not the JSON line of bench_denseflow.py with '
                    f'images_per_s ({e}); rerun the peer and save its output') from e
  return peer


if __name__ == '__main__':
  cli.run_main(main)
