"""Evaluate a trained run: python eval.py --workdir=runs/fm --mode=bpd

Modes: bpd, samples, reconstruct, interpolate, manipulate, entropy, channels, speed,
fid, summary. Each writes <mode>.json (and PNGs beside it) to --output_dir, by
default <workdir>/eval (a workdir that cannot be written, such as a read-only
mount, sends them to a folder under the temp dir, and says which), and prints the
JSON. --config defaults to the config saved in the workdir; overrides on it need
--config=configs/saved.py:<workdir>. `summary` needs only --config (no checkpoint,
nothing allocated). The run's checkpoints are opened read-only, so evaluating
beside a running train.py is safe. The work is eiw_jax.train.evaluate.run_mode.
"""
from absl import flags
from ml_collections import config_flags

from eiw_jax import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (default: the workdir\'s).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'The training run to evaluate.')
_MODE = flags.DEFINE_string('mode', 'bpd', 'What to measure (see the module docstring).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed for sampling and dequantization noise.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None,
                                  'Where the results go (default: <workdir>/eval).')


def main(argv):
  del argv
  from eiw_jax.train import evaluate  # pylint: disable=g-import-not-at-top
  result = evaluate.run_mode(_CONFIG.value, _WORKDIR.value, _MODE.value, seed=_SEED.value,
                             output_dir=_OUTPUT_DIR.value)
  print(evaluate.result_text(result), end='')


if __name__ == '__main__':
  cli.run_main(main)
