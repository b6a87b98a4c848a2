"""The training runtime: everything between a config and a trained run.

    config.py      the run config: one schema (each group's defaults from the code it
                   configures), validate_run, upgrade of a saved config.json
    recipes.py     the configs' building blocks (paper backbones, :small, :smoke)
    settings.py    the `train` group's keys, the train/optim checks
    run_config.py  a saved config against today's: which changes a resume accepts
    state.py       TrainState and its data-dependent init
    optimizer.py   the optimiser recipe (the `optim` keys), the Shuffle's own rates
    step.py        one update, jitted by the trainer over the device mesh
    trainer.py     the run's programs: mesh, model, init and step, compiled ahead
    loop.py        train_and_evaluate: the loop of train.py
    checkpoint.py  orbax (the one module that knows it), checksums.py, resume.py
    runs.py        opening a saved run read-only (load_run, eval.py)
    evaluate.py    eval.py's work: a mode on a saved run, its results written whole
    workdir.py     the workdir's lock and place; multihost.py several processes, signals
    files.py       the one write path (whole files, storage errors as one line)
    history.py     a run's history kept from a silent restart; data.json
    stored_step.py, xla_options.py, host_memory.py   compilation and memory
    monitor.py     metrics, evaluation and samples during training

It imports the model library, data/ and evaluation/; nothing below it imports it
(eiw_jax.load_run loads it lazily). Names are loaded on first use, so `import eiw_jax.train`
alone is cheap.
"""
import importlib

_EXPORTS = {'train_and_evaluate': 'loop', 'Trainer': 'trainer', 'TrainState': 'state',
            'make_optimizer': 'optimizer', 'load_run': 'runs'}

__all__ = list(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f'eiw_jax.train.{_EXPORTS[name]}'), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
