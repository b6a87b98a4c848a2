"""XLA compiler options (xla_options): the CPU kernels chosen per backbone, and
copy insertion for a donated state."""
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np

from eiw_jax import nets
from eiw_jax.train import recipes
from eiw_jax.train import xla_options
from eiw_jax import train as train_lib
from helpers import ynn_fusions


def test_denseflow_programs_use_xlas_kernels_and_agree_with_ynnpacks():
  """A 3x3 convolution's forward and backward at one of DenseFlow's shapes: with
  DenseFlow's options it compiles without YNNPACK fusions, with Glow's (XLA's
  default) with them, and both give the same values to float32 rounding."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((8, 16, 16, 176)).astype(np.float32)
  kernel = (rng.standard_normal((3, 3, 176, 64)) * 0.05).astype(np.float32)
  dy = rng.standard_normal((8, 16, 16, 64)).astype(np.float32)

  def fwd_bwd(x, kernel, dy):
    y, vjp = jax.vjp(nets.conv_same, x, kernel)
    return y, vjp(dy)

  ours = jax.jit(fwd_bwd, compiler_options=xla_options.kernels('denseflow'))
  default = jax.jit(fwd_bwd, compiler_options=xla_options.kernels('glow'))
  assert not ynn_fusions(ours.lower(x, kernel, dy).compile())
  assert ynn_fusions(default.lower(x, kernel, dy).compile())
  chex.assert_trees_all_close(ours(x, kernel, dy), default(x, kernel, dy),
                              rtol=1e-4, atol=1e-3)


def test_a_users_own_xla_flag_wins(monkeypatch):
  region = 'xla_cpu_copy_insertion_use_region_analysis'
  assert xla_options.kernels('denseflow') == {'xla_cpu_experimental_ynn_fusion_type': ''}
  assert 'xla_cpu_experimental_ynn_fusion_type' in xla_options.run_once('denseflow')
  assert xla_options.compiler_options('glow') == {region: True}
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=individual_dot '
                     f'--{region}=false')
  assert xla_options.kernels('denseflow') == {}
  assert 'xla_cpu_experimental_ynn_fusion_type' not in xla_options.run_once('denseflow')
  assert xla_options.compiler_options('glow') == {}


def _entry_copies(compiled) -> int:
  entry = re.search(r'\nENTRY [^\n]*\{\n(.*?)\n\}', compiled.as_text(), re.S).group(1)
  return len(re.findall(r'= \S+ copy\(', entry))


def test_a_donated_optimiser_state_is_updated_without_copying_it():
  """train_step's pattern: a moment updated in place, the parameters updated from
  the new moment, both kept only when the gradient is finite. XLA's default copy
  insertion copies every moment before writing it; the run's options copy none,
  and the values are the same."""
  def step(state, grads):
    finite = jnp.isfinite(sum(jnp.sum(g * g) for g in grads))
    new = []
    for (p, mu), g in zip(state, grads):
      mu_new = 0.9 * mu + 0.1 * g
      new.append((jnp.where(finite, p - 0.1 * mu_new / (jnp.abs(mu_new) + 1.0), p),
                  jnp.where(finite, mu_new, mu)))
    return new

  rng = np.random.default_rng(0)
  shapes = [(3, 5), (7,), (2, 2, 4)]
  state = [tuple(rng.standard_normal((2, *s)).astype(np.float32)) for s in shapes]
  grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
  results = {}
  for name, options in (('ours', xla_options.compiler_options('glow')), ('default', {})):
    compiled = jax.jit(step, donate_argnums=0, compiler_options=options).lower(
        state, grads).compile()
    results[name] = (_entry_copies(compiled), compiled(jax.device_put(state), grads))
  assert results['default'][0] >= len(shapes) and results['ours'][0] == 0, results
  chex.assert_trees_all_close(results['ours'][1], results['default'][1], rtol=1e-6)


def test_a_denseflow_trainers_step_runs_without_ynnpack():
  """The step train.py runs for a (tiny) DenseFlow carries the options, and so do
  the trainer's other programs."""
  cfg = recipes.denseflow_base(name='cifar10', image_size=8, batch_size=2, train_steps=1)
  recipes.tiny_denseflow(cfg, units=(1,), modules=(1,))
  cfg.model.update(num_scales=1, dequantizer='uniform', shuffle=False)
  trainer = train_lib.Trainer(cfg)
  assert ynn_fusions(trainer.compile_step(trainer.abstract_state()).compiled) == 0
  x, kernel = np.zeros((8, 16, 16, 176), np.float32), np.zeros((3, 3, 176, 64), np.float32)
  assert ynn_fusions(trainer.jit(nets.conv_same).lower(x, kernel).compile()) == 0  # eval, samples
