"""Measured memory of (quantized) tensors and models: bytes of the storages they hold."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["model_storage_bytes", "tensor_storage_bytes"]


def _collect(tensor: torch.Tensor, storages: dict[tuple[str, int], int]) -> None:
    flatten = getattr(type(tensor), "__tensor_flatten__", None)
    if (
        flatten is not None
        and type(tensor) is not torch.Tensor
        and not isinstance(tensor, nn.Parameter)
    ):
        names, _ = flatten(tensor)
        for name in names:
            inner = getattr(tensor, name)
            if isinstance(inner, torch.Tensor):
                _collect(inner, storages)
        return
    if isinstance(tensor, nn.Parameter) and type(tensor.data) is not torch.Tensor:
        _collect(tensor.data, storages)
        return
    storage = tensor.untyped_storage()
    storages[(str(tensor.device), storage.data_ptr())] = storage.nbytes()


def tensor_storage_bytes(tensor: torch.Tensor) -> int:
    """Bytes of the storages behind ``tensor``; a tensor subclass counts all its inner tensors.

    Args:
        tensor: a plain tensor, a Parameter, or a torchao quantized tensor (Int8Tensor, NF4Tensor, ...).
    """
    storages: dict[tuple[str, int], int] = {}
    _collect(tensor, storages)
    return sum(storages.values())


def model_storage_bytes(model: nn.Module) -> int:
    """Bytes of all parameter and buffer storages of ``model``, shared storages counted once.

    Args:
        model: any module, quantized or not.
    """
    storages: dict[tuple[str, int], int] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        _collect(tensor, storages)
    return sum(storages.values())
