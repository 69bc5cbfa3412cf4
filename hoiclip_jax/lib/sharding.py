"""The device mesh and the shardings of the data-parallel step.

One mesh axis, 'data', over every device of every process. Parameters and optimizer state are
replicated; batches are sharded along their leading (batch) axis. Each process feeds only its
own slice of the global batch.
"""
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> jax.sharding.Mesh:
    """A ('data',) mesh over `devices` (default: all devices of all processes).

    The axis type is Auto on purpose: for data parallelism the batch sharding of the inputs
    propagates through the whole model and the compiler inserts the gradient all-reduce, so model,
    matching and loss code need no sharding annotations (Explicit would demand them on every
    reshape/gather that touches the batch axis).
    """
    devices = jax.devices() if devices is None else list(devices)
    return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,),
                             axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh) -> None:
    """The global batch must split evenly over devices and processes."""
    if global_batch_size % mesh.size:
        raise ValueError(
            f"global batch {global_batch_size} does not split over {mesh.size} devices")
    if global_batch_size % jax.process_count():
        raise ValueError(f"global batch {global_batch_size} does not split over "
                         f"{jax.process_count()} processes")


def put_batch(local_batch: dict, mesh) -> dict:
    """Turns this process's numpy batch slice into global arrays sharded on 'data'."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def put_replicated(tree: Any, mesh) -> Any:
    """Places a host pytree on every device (same values everywhere)."""
    return jax.device_put(tree, replicated(mesh))
