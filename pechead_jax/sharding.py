"""The device mesh and batch placement: one `data` axis over every device of every host.

Parameters are replicated; the batch is split along its leading axis. Under `jax.jit` with
these shardings XLA inserts the gradient all-reduce itself, so the step needs no `pmean`.
"""

from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: int | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh over `devices` (default: all devices of all processes), axis `data`.

    The axis is `Auto`: jax 0.10 makes mesh axes `Explicit` by default, which would force
    every intermediate array to carry its sharding in its type.
    """
    n = jax.device_count() if devices is None else devices
    if n < 1 or n > jax.device_count():
        raise ValueError(f"make_mesh: devices={devices} but {jax.device_count()} are available")
    return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    """The sharding of parameters and optimizer state: a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """The sharding of batch arrays: the leading (batch) axis split over `data`."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(global_batch: int, mesh: jax.sharding.Mesh, name: str = "batch") -> int:
    """Return the per-process batch size; raise unless `global_batch` splits evenly."""
    devices = mesh.devices.size
    if global_batch % devices:
        raise ValueError(
            f"{name}_size={global_batch} must be a multiple of the number of devices "
            f"({devices}) so every device gets the same share"
        )
    return global_batch // jax.process_count()


def put_batch(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Assemble the global batch from this process's slice (`[B/processes, ...]` arrays)."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in batch.items()
    }
