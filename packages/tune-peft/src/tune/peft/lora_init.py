"""Initialisations of the LoRA factors: default (zero B), Gaussian, PiSSA."""

from __future__ import annotations

import math

import torch
from torch import nn

from tune.peft.dense_weight import is_tensor_subclass


def init_default(lora_a: torch.Tensor, lora_b: torch.Tensor) -> None:
    """A Kaiming-uniform (as `nn.Linear`), B zero: the adapter starts as an exact no-op.

    Args:
        lora_a: [r, in] filled in place.
        lora_b: [out, r] filled in place.
    """
    nn.init.kaiming_uniform_(lora_a, a=math.sqrt(5))
    nn.init.zeros_(lora_b)


def init_gaussian(lora_a: torch.Tensor, lora_b: torch.Tensor) -> None:
    """A normal with std `1 / r`, B zero.

    Args:
        lora_a: [r, in] filled in place.
        lora_b: [out, r] filled in place.
    """
    nn.init.normal_(lora_a, std=1.0 / lora_a.shape[0])
    nn.init.zeros_(lora_b)


def init_pissa(
    weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float, name: str
) -> None:
    """PiSSA: A, B from the top-r singular triplets of W; W becomes the residual, in place.

    With `W = U S V^T`: `B = U_r sqrt(S_r / s)`, `A = sqrt(S_r / s) V_r^T`, and
    `W <- W - s B A`, so the layer's output is unchanged at init.

    Args:
        weight: [out, in] plain base weight, overwritten with the residual.
        lora_a: [r, in] filled in place.
        lora_b: [out, r] filled in place.
        scaling: The LoRA scale `s`.
        name: The module's name, for error messages.
    """
    if is_tensor_subclass(weight) or not weight.dtype.is_floating_point:
        raise TypeError(
            f"PiSSA init of {name!r} needs a plain floating-point weight, got "
            f"{type(weight).__name__} ({weight.dtype}); apply LoRA with init='pissa' before quantizing "
            "the base (then quantize the residual)"
        )
    r = lora_a.shape[0]
    with torch.no_grad():
        w32 = weight.to(torch.float32)
        u, s, vh = torch.linalg.svd(w32, full_matrices=False)
        root = torch.sqrt(s[:r] / scaling)  # [r]
        b = u[:, :r] * root.view(1, -1)  # [out, r]
        a = root.view(-1, 1) * vh[:r]  # [r, in]
        lora_a.copy_(a)
        lora_b.copy_(b)
        weight.copy_((w32 - scaling * (b @ a)).to(weight.dtype))
