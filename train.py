"""Train EIW-Flow: python train.py --config=configs/fashion_mnist.py:small --workdir=runs/fm

Flags only; the loop is eiw_jax.train.loop.train_and_evaluate. Rerunning the same
command resumes from the newest complete checkpoint in --workdir (a workdir whose
checkpoints are gone is refused; --config.train.restart=True starts it over, keeping
the old run in restart-<n>/). Exit codes: 0 when done, and after SIGTERM once a
checkpoint of the current step is saved (stderr says so); Ctrl-C saves the same way
and ends as interrupted (130), a second Ctrl-C at once; 2 for bad input, a workdir in
use by another run, a storage failure (disk full) or a run stopped by non-finite
steps (one line on stderr). docs/RELIABILITY.md has every case.
"""
from absl import flags
from ml_collections import config_flags

from eiw_jax import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py[:variant]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and samples.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  from eiw_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  result = train_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  import jax  # pylint: disable=g-import-not-at-top
  if (result.get('step') == _CONFIG.value.train.num_steps and 'test_bpd' in result
      and jax.process_index() == 0):
    print(f'final test bits/dim: {result["test_bpd"]:.4f} (workdir {_WORKDIR.value})')


if __name__ == '__main__':
  cli.run_main(main)
