"""Device mesh and shardings for data-parallel training.

One 1-D mesh over every device (all hosts) with axis 'data'. The batch is split
along it; parameters and optimiser state are replicated. The same jitted step
runs unchanged on 1 CPU, 8 GPUs or a multi-host TPU pod.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from eiw_jax.errors import UserError

DATA_AXIS = 'data'


def make_mesh(devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
  n = mesh.devices.size
  if global_batch % n or global_batch % jax.process_count():
    raise UserError(
        f'data.batch_size={global_batch} is not divisible by the {n} devices '
        f'({jax.process_count()} hosts); set --config.data.batch_size to a multiple of {n}')


def put_global_batch(local_batch: np.ndarray, mesh: Mesh) -> jax.Array:
  """This host's rows of the global batch -> one global array sharded over 'data'."""
  return jax.make_array_from_process_local_data(data_sharding(mesh), local_batch)
