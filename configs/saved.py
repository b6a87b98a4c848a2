"""The config a run saved in its workdir: --config=configs/saved.py:<workdir>.

For eval.py (and train.py) with --config.* overrides on a run's own config, e.g.
`eval.py --workdir=runs/fm --config=configs/saved.py:runs/fm --config.eval.temperatures=0.5,0.7
--mode=samples`. Without overrides eval.py reads the saved config by itself.
"""
from eiw_jax.train import runs


def get_config(workdir=None):
  return runs.saved_config(workdir)
