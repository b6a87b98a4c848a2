"""Evaluate a trained run: python eval.py --workdir=runs/fm --mode=bpd

Modes: bpd, samples, reconstruct, interpolate, manipulate, entropy, channels, speed,
fid, summary. Each writes <workdir>/eval/<mode>.json (and PNGs beside it) and
prints the JSON. --config defaults to the config saved in the workdir; `summary`
needs only --config (no checkpoint, nothing allocated). The run's checkpoints are
opened read-only, so evaluating beside a running train.py is safe.
"""
import json
import os

from absl import flags
from ml_collections import config_flags

from eiw_jax import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (default: the workdir\'s).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'The training run to evaluate.')
_MODE = flags.DEFINE_string('mode', 'bpd', 'What to measure (see the module docstring).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed for sampling and dequantization noise.')


def main(argv):
  del argv
  # pylint: disable=g-import-not-at-top
  import jax
  from eiw_jax import data, evaluation
  from eiw_jax.train import runs
  from eiw_jax.builder import build
  from eiw_jax.errors import UserError
  run = evaluation.get_mode(_MODE.value) if _MODE.value in evaluation.MODES else None
  if run is None:
    raise UserError(f'unknown --mode={_MODE.value}; choose one of {", ".join(evaluation.MODES)}')
  workdir = _WORKDIR.value
  config = _CONFIG.value or runs.saved_config(workdir)
  if _MODE.value == 'summary':
    model, variables = build(config), None
  else:
    if not workdir:
      raise UserError(f'--mode={_MODE.value} needs --workdir=<a training run>')
    model, variables, step = runs.load_for_eval(config, workdir)
    print(f'evaluating step {step} of {workdir}')
  out_dir = os.path.join(workdir, 'eval') if workdir else None
  splits = {}

  def load_split(name):
    if name not in splits:
      splits[name] = data.load_split(config.data, name)
    return splits[name]

  ctx = evaluation.EvalContext(model=model, variables=variables, config=config,
                               out_dir=out_dir, rng=jax.random.key(_SEED.value),
                               load_split=load_split)
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
  result = run(ctx)
  text = json.dumps(result, indent=2, sort_keys=True)
  if out_dir:
    with open(os.path.join(out_dir, f'{_MODE.value}.json'), 'w') as f:
      f.write(text + '\n')
  print(text)


if __name__ == '__main__':
  cli.run_main(main)
