"""Where a recipe runs: ``tune.dist.init_distributed`` plus the config's dtype."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tune.dist import DistributedInfo, init_distributed

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Runtime:
    """This process: ``dist`` (rank, world size, backend), its ``device`` and the ``dtype``."""

    dist: DistributedInfo
    device: torch.device
    dtype: torch.dtype

    @property
    def is_main(self) -> bool:
        """True on global rank 0, the rank that logs and writes files."""
        return self.dist.is_main_process


def start_runtime(device: str, dtype: str, backend: str = "auto") -> Runtime:
    """The process group (when launched distributed), the device and the dtype of a config.

    Args:
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        dtype: ``float32`` or ``bfloat16``.
        backend: ``auto`` (nccl on CUDA, gloo on CPU), ``nccl`` or ``gloo``.
    """
    info = init_distributed(backend=None if backend == "auto" else backend, device=device)
    return Runtime(dist=info, device=info.device, dtype=DTYPES[dtype])
