"""Benchmark the EIW model against the vanilla model of the same config:

  python bench.py --config=configs/fashion_mnist.py:small --json=bench.json
  python bench.py --config=configs/fashion_mnist.py:small --devices=1,2,4,8 --invertible_depths=6,24

Prints a table and writes JSON (keys per model: train_images_per_s,
sample_images_per_s, compile_s, peak_memory_bytes, flops_per_step, ...).
"""
import json
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
flags.mark_flags_as_required(['config'])


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  from eiw_jax import bench_lib  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  names = (_ONLY.value,) if _ONLY.value else ('eiw', 'vanilla')
  log = lambda m: print(m, file=sys.stderr)
  result = bench_lib.compare(config, names=names, rounds=_ROUNDS.value, steps=_STEPS.value,
                             peak_flops=_PEAK.value * 1e9, count_flops=_FLOPS.value, log=log)
  result['machine'] = dict(platform=platform.platform(), processor=platform.processor(),
                           devices=[str(d) for d in jax.devices()],
                           backend=jax.default_backend(), jax=jax.__version__)
  if _DEPTHS.value:
    result['invertible_memory'] = bench_lib.invertible_memory(
        config, tuple(int(n) for n in _DEPTHS.value))
  if _DEVICES.value:
    base = [a for a in sys.argv if not a.startswith(('--devices', '--invertible_depths',
                                                      '--json', '--only'))]
    result['device_scaling_step_s'] = bench_lib.device_scaling(base, [int(n) for n in _DEVICES.value])
  print(f'{"":24s}' + ''.join(f'{n:>16s}' for n in names))
  for key in ('train_images_per_s', 'sample_images_per_s', 'compile_s', 'peak_memory_bytes',
              'flops_per_step', 'achieved_flops_per_s', 'params'):
    print(f'{key:24s}' + ''.join(f'{result[n][key]:16.4g}' for n in names))
  if 'eiw_step_time_over_vanilla' in result:
    print(f'EIW step time / vanilla step time: {result["eiw_step_time_over_vanilla"]:.4f}')
  for key in ('invertible_memory', 'device_scaling_step_s'):
    if key in result:
      print(f'{key}: {json.dumps(result[key])}')
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  cli.run_main(main)
