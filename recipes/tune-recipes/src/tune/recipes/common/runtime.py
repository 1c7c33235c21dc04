"""Process setup: the distributed environment, the device, seeds and the dtype."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import torch

from tune.dist import DistributedInfo, destroy_distributed, init_distributed

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Runtime:
    """Where this process runs.

    Args:
        dist: rank, world size and backend (a single process when not launched by torchrun).
        device: the device this rank computes on.
        dtype: parameter and compute dtype.
    """

    dist: DistributedInfo
    device: torch.device
    dtype: torch.dtype

    @property
    def is_main(self) -> bool:
        """True on global rank 0, the rank that logs and writes files."""
        return self.dist.is_main_process


def start_runtime(device: str, dtype: str, backend: str = "auto") -> Runtime:
    """Initialise the process group (if launched distributed), pick the device and dtype.

    Args:
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        dtype: ``float32`` or ``bfloat16``.
        backend: ``auto`` (nccl on CUDA, gloo on CPU), ``nccl`` or ``gloo``.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: 'cuda' was requested but torch.cuda.is_available() is False")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if backend == "auto":
        backend = "nccl" if use_cuda else "gloo"
    info = init_distributed(backend=backend)
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
        dev = torch.device("cuda", info.local_rank)
    else:
        dev = torch.device("cpu")
    return Runtime(dist=info, device=dev, dtype=DTYPES[dtype])


def stop_runtime(wait_for_ranks: bool = True) -> None:
    """Tear the process group down (no-op for a single process).

    Args:
        wait_for_ranks: barrier first (a clean end); False when unwinding from an error, where
            the other ranks may be blocked in a collective this rank will never enter.
    """
    if wait_for_ranks:
        destroy_distributed()
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's (if installed) and torch's generators."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is optional
        return
    np.random.seed(seed % 2**32)
