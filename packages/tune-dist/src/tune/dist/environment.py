"""Process group setup from the standard launcher environment (torchrun, SLURM, Kubeflow, Ray)."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import overload

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class DistributedInfo:
    """Where this process sits in the job.

    Args:
        rank: global rank in [0, world_size).
        local_rank: rank on this node in [0, local_world_size).
        world_size: number of processes in the job.
        local_world_size: number of processes on this node.
        master_addr: rendezvous host (None when running as a single process).
        master_port: rendezvous port (None when running as a single process).
        backend: process-group backend ("nccl", "gloo", ...) or None without a process group.
        device: the device this rank computes on (``cuda:<local_rank>`` or ``cpu``).
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    master_addr: str | None = None
    master_port: int | None = None
    backend: str | None = None
    device: torch.device = torch.device("cpu")

    @property
    def is_distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main_process(self) -> bool:
        """True on global rank 0 (the rank that logs and writes files)."""
        return self.rank == 0


@overload
def _read_int(env: Mapping[str, str], key: str, default: int) -> int: ...
@overload
def _read_int(env: Mapping[str, str], key: str, default: None) -> int | None: ...
def _read_int(env: Mapping[str, str], key: str, default: int | None) -> int | None:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"environment variable {key}={raw!r} is not an integer; launchers such as torchrun "
            f"set it to a whole number"
        ) from None


def read_environment(env: Mapping[str, str] | None = None) -> DistributedInfo:
    """Read RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT.

    Missing variables mean a single process (rank 0 of 1). No process group is created.

    Args:
        env: the environment to read; defaults to ``os.environ``.

    Returns:
        A DistributedInfo with ``backend=None`` and ``device`` chosen by CUDA availability.
    """
    env = os.environ if env is None else env
    world_size = _read_int(env, "WORLD_SIZE", 1)
    rank = _read_int(env, "RANK", 0)
    local_rank = _read_int(env, "LOCAL_RANK", rank)
    local_world_size = _read_int(env, "LOCAL_WORLD_SIZE", world_size)
    master_port = _read_int(env, "MASTER_PORT", None)
    master_addr = env.get("MASTER_ADDR") or None
    if world_size < 1:
        raise ValueError(f"WORLD_SIZE={world_size}: expected at least 1")
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside [0, WORLD_SIZE={world_size})")
    if not 0 <= local_rank < local_world_size:
        raise ValueError(
            f"LOCAL_RANK={local_rank} is outside [0, LOCAL_WORLD_SIZE={local_world_size})"
        )
    if world_size > 1 and (master_addr is None or master_port is None):
        raise ValueError(
            f"WORLD_SIZE={world_size} but MASTER_ADDR={master_addr!r} / MASTER_PORT={master_port!r} "
            f"are not both set; launch with torchrun or export them"
        )
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    else:
        device = torch.device("cpu")
    return DistributedInfo(
        rank=rank,
        local_rank=local_rank,
        world_size=world_size,
        local_world_size=local_world_size,
        master_addr=master_addr,
        master_port=master_port,
        backend=None,
        device=device,
    )


def default_backend(device: torch.device) -> str:
    """The process-group backend for a device type: nccl on CUDA, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed(
    backend: str | None = None,
    timeout: timedelta = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
    device: str = "auto",
) -> DistributedInfo:
    """Create the default process group from the launcher's environment variables.

    Without WORLD_SIZE (or with WORLD_SIZE=1) this is a no-op and returns single-process info;
    a recipe can call it unconditionally. On CUDA it also selects ``cuda:<local_rank>``.

    Args:
        backend: "nccl", "gloo", ...; None picks nccl on CUDA and gloo on CPU.
        timeout: how long collectives wait before raising (a hung rank fails, it does not hang).
        env: the environment to read; defaults to ``os.environ``.
        device: "auto" (CUDA when available), "cuda" (raises without CUDA) or "cpu" (the CPU
            even on a GPU machine).

    Returns:
        The DistributedInfo of this process, with ``backend`` set when a group exists.
    """
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device: expected 'auto', 'cuda' or 'cpu', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: 'cuda' was requested but torch.cuda.is_available() is False")
    info = read_environment(env)
    if device == "cpu":
        info = replace(info, device=torch.device("cpu"))
    if info.device.type == "cuda":
        torch.cuda.set_device(info.device)
    if not info.is_distributed:
        logger.debug("no distributed environment (WORLD_SIZE unset or 1): single process")
        return info
    chosen = backend or default_backend(info.device)
    if dist.is_initialized():
        current = dist.get_backend()
        if dist.get_world_size() != info.world_size or dist.get_rank() != info.rank:
            raise RuntimeError(
                f"a process group already exists with rank {dist.get_rank()} of "
                f"{dist.get_world_size()}, but the environment says rank {info.rank} of "
                f"{info.world_size}"
            )
        logger.debug("process group already initialised (backend %s)", current)
        chosen = str(current)
    else:
        # env:// reads MASTER_ADDR/MASTER_PORT; rank and world size are passed explicitly so a
        # launcher that sets only RANK/WORLD_SIZE (SLURM wrappers, Ray) works the same.
        dist.init_process_group(
            backend=chosen,
            init_method="env://",
            rank=info.rank,
            world_size=info.world_size,
            timeout=timeout,
            device_id=info.device if info.device.type == "cuda" else None,
        )
    if info.rank == 0:
        logger.info(
            "process group up: %d ranks (%d per node), backend %s, device %s",
            info.world_size,
            info.local_world_size,
            chosen,
            info.device.type,
        )
    return replace(info, backend=chosen)


def destroy_distributed(wait: bool = True) -> None:
    """Wait for every rank, then destroy the default process group; a no-op without one.

    Args:
        wait: barrier first (a clean end); False when unwinding from an error, where the other
            ranks may be blocked in a collective this rank will never enter.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if wait:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's (if installed) and torch's generators (CPU and every GPU).

    Args:
        seed: the seed; NumPy gets ``seed % 2**32``.
    """
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is optional
        return
    np.random.seed(seed % 2**32)
