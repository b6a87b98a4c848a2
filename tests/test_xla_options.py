"""XLA compiler options (xla_options): the CPU kernel choice, and its lazy `jit`."""
import subprocess
import sys

import chex
import jax
import numpy as np

from eiw_jax import nets, xla_options


def ynn_fusions(compiled) -> int:
  """How many YNNPACK fusions a compiled CPU program calls."""
  return compiled.as_text().count('%ynn_fusion')


def test_cpu_programs_use_xlas_kernels_and_agree_with_ynnpacks():
  """A 3x3 convolution's forward and backward at one of DenseFlow's shapes: the
  project's `jit` compiles it without YNNPACK fusions, a plain jax.jit with them
  (so the check can fail), and both give the same values to float32 rounding."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((8, 16, 16, 176)).astype(np.float32)
  kernel = (rng.standard_normal((3, 3, 176, 64)) * 0.05).astype(np.float32)
  dy = rng.standard_normal((8, 16, 16, 64)).astype(np.float32)

  def fwd_bwd(x, kernel, dy):
    y, vjp = jax.vjp(nets.conv_same, x, kernel)
    return y, vjp(dy)

  ours, plain = xla_options.jit(fwd_bwd), jax.jit(fwd_bwd)
  assert not ynn_fusions(ours.lower(x, kernel, dy).compile())
  assert ynn_fusions(plain.lower(x, kernel, dy).compile())
  chex.assert_trees_all_close(ours(x, kernel, dy), plain(x, kernel, dy), rtol=1e-4, atol=1e-3)
  assert ours.__doc__ == fwd_bwd.__doc__ and ours.__name__ == 'fwd_bwd'


def test_a_users_own_xla_flag_wins(monkeypatch):
  assert xla_options.kernels() == {'xla_cpu_experimental_ynn_fusion_type': ''}
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=individual_dot')
  assert xla_options.kernels() == {}
  assert 'xla_cpu_experimental_ynn_fusion_type' not in xla_options.run_once()


def test_importing_the_jitted_functions_starts_no_backend():
  """Their compiler options depend on the backend, asked for at the first call; at
  import it would be too early for jax.distributed.initialize or a device count."""
  code = ('import jax._src.xla_bridge as xb\n'
          'import eiw_jax, eiw_jax.evaluation.common, eiw_jax.evaluation.transitions\n'
          'import eiw_jax.train_monitor, eiw_jax.bench_lib\n'
          'assert not xb.backends_are_initialized()\n'
          'eiw_jax.evaluation.common.log_mean_exp([0.0, 1.0])\n'
          'assert xb.backends_are_initialized()\n')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                        check=False)
  assert proc.returncode == 0, proc.stderr
