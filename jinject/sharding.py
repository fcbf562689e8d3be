"""Where arrays live: the ("data", "fsdp") device mesh, parameter and batch shardings, multi-host start-up.

Parameters are fully sharded over "fsdp" (each on its largest evenly divisible axis); batches are split
by rows over both axes. Every function here is about placement only: nothing changes a value.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jinject.config import TrainConfig

Batch = dict[str, Any]


def make_mesh(config: TrainConfig, devices: list | None = None) -> Mesh:
    """A ("data", "fsdp") mesh over the local/global devices (Auto axes: tracr's gather needs them)."""
    devices = devices if devices is not None else jax.devices()
    n = len(devices)
    fsdp = config.mesh_fsdp
    if fsdp > n or n % fsdp:
        raise ValueError(f"--fsdp {fsdp} needs a multiple of {fsdp} devices, but {n} {devices[0].platform} device"
                         f"{'s are' if n != 1 else ' is'} available; use --fsdp 1 or a divisor of {n}")
    data = config.mesh_data if config.mesh_data > 0 else n // fsdp
    if data * fsdp != n:
        raise ValueError(f"mesh data={data} x fsdp={fsdp} does not use the {n} available devices exactly")
    return jax.make_mesh((data, fsdp), ("data", "fsdp"), axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def fsdp_spec(shape: tuple[int, ...], fsdp: int) -> P:
    """Shard a parameter's largest axis that divides evenly over the fsdp axis; replicate the rest."""
    if fsdp > 1 and shape:
        for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
            if shape[axis] % fsdp == 0:
                spec = [None] * len(shape)
                spec[axis] = "fsdp"
                return P(*spec)
    return P()


def param_shardings(tree: Any, mesh: Mesh) -> Any:
    """The same tree, each array replaced by its fully-sharded placement (`fsdp_spec`)."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(tuple(np.shape(x)), fsdp)), tree)


def batch_shardings(batch: Batch, mesh: Mesh) -> Batch:
    """Rows split over every device of the mesh; refuses a batch whose rows do not divide evenly."""
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    for k, v in batch.items():
        if np.shape(v)[0] % n:
            raise ValueError(f"batch field {k!r} has {np.shape(v)[0]} rows, not divisible by the {n} devices; "
                             "choose --batch-size (and text batch size) as a multiple of the device count")
    return {k: NamedSharding(mesh, P(("data", "fsdp"))) for k in batch}


def shard_batch(batch: Batch, shardings: Batch) -> Batch:
    """Global arrays from a host batch that every process builds identically (it is a function of
    (seed, step)): each process hands over only the rows its own devices hold, so this also works
    multi-host."""
    return {k: jax.make_array_from_callback(np.shape(v), shardings[k], lambda idx, v=v: v[idx])
            for k, v in batch.items()}


def maybe_initialize_distributed() -> None:
    """Multi-host (TPU pods, multi-node GPU): join the cluster when the environment describes one."""
    if any(os.environ.get(v) for v in ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES",
                                       "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE")):
        try:
            jax.distributed.initialize()
        except RuntimeError as e:  # already initialised
            if "already" not in str(e):
                raise
