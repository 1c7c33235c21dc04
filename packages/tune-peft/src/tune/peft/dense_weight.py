"""Telling plain weights from quantized tensor subclasses, and dequantizing the latter on demand."""

from __future__ import annotations

import torch
from torch import nn


def is_tensor_subclass(weight: torch.Tensor) -> bool:
    """Whether `weight` is a tensor subclass (e.g. torchao's NF4Tensor) rather than a plain tensor.

    Args:
        weight: A parameter or tensor.
    """
    return type(weight) not in (torch.Tensor, nn.Parameter)


def dense_weight(weight: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A plain (dequantized) copy or view of `weight`, in `dtype` when given.

    Quantized subclasses are dequantized through `get_original_weight()` (torchao NF4) or
    `dequantize()` (other torchao subclasses); this materialises the whole weight, so callers keep
    it only as long as they need it.

    Args:
        weight: [out, in] weight, plain or a tensor subclass.
        dtype: Target dtype; None keeps the weight's (original) dtype.
    """
    if not is_tensor_subclass(weight):
        return weight if dtype is None else weight.to(dtype)
    if hasattr(weight, "get_original_weight"):
        dense = weight.get_original_weight()
    elif callable(getattr(type(weight), "dequantize", None)):
        dense = weight.dequantize()
    else:
        raise TypeError(
            f"cannot dequantize a weight of type {type(weight).__name__}: expected a plain tensor or a "
            "subclass with get_original_weight() or dequantize()"
        )
    return dense if dtype is None else dense.to(dtype)


def adapter_dtype_for(weight: torch.Tensor) -> torch.dtype:
    """The dtype adapters take by default next to `weight`: its own, or float32 if not floating.

    Args:
        weight: The base weight (plain or subclass; NF4 reports its original dtype).
    """
    return weight.dtype if weight.dtype.is_floating_point else torch.float32
