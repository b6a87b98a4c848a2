"""Memory and time of one gradient step of a CNF block, for both of diffrax's adjoints.

    python experiments/ffjord_adjoint_memory.py [batch]

The block is scale 1 of configs/cifar10.py:ffjord (32x32x3, dynamics net of three
hidden 3x3 convolutions of width 64, Dopri5 at rtol = atol = 1e-5, max_steps 1000,
Hutchinson's trace) with its parameters moved off the identity by N(0, 0.02^2).
Memory is XLA's own account of the compiled gradient (`memory_analysis()`: the
temporary buffers it allocates), so nothing has to be sampled while it runs.
"""
from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from eiw_jax.backbones import ffjord


def main(batch: int) -> None:
  x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, 32, 32, 3)), jnp.float32)
  settings = dict(hidden=64, layers=4)
  twin = ffjord.CNFBlock(solver='euler', fixed_steps=1, **settings)  # same parameters
  params = twin.init({'params': jax.random.key(0), 'noise': jax.random.key(1)}, x[:1])['params']
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  params = jax.tree.unflatten(tree, [p + 0.02 * jax.random.normal(k, p.shape)
                                     for p, k in zip(leaves, keys)])
  rngs = {'noise': jax.random.key(3)}
  print(f'{jax.devices()[0].device_kind}, batch {batch}')
  for adjoint in ffjord.ADJOINTS[:2]:
    layer = ffjord.CNFBlock(adjoint=adjoint, **settings)

    def loss(p, layer=layer):
      y, logdet = layer.apply({'params': p}, x, rngs=rngs)
      return jnp.sum(y ** 2) - jnp.sum(logdet)

    compiled = jax.jit(jax.grad(loss)).lower(params).compile()
    memory = compiled.memory_analysis()
    jax.block_until_ready(compiled(params))
    start = time.perf_counter()
    jax.block_until_ready(compiled(params))
    seconds = time.perf_counter() - start
    _, sown = layer.apply({'params': params}, x, rngs=rngs, mutable=[ffjord.NFE_COLLECTION])
    nfe = int(jax.tree.leaves(sown)[0])
    print(f'{adjoint}: temporary buffers {memory.temp_size_in_bytes / 2**20:.1f} MiB, '
          f'step {seconds:.2f} s, forward nfe {nfe}', flush=True)


if __name__ == '__main__':
  main(int(sys.argv[1]) if len(sys.argv) > 1 else 8)
