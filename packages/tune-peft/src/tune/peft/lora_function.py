"""LoRA over a frozen dense linear as one autograd function: fewer full-size elementwise passes.

``F.linear(x, W, b) + s * B(A(x))`` through autograd costs, besides the GEMMs, a scaling pass and
an add over the [N, out] output in the forward, the scaling again in the backward, and an add
that joins the base and adapter gradients of ``x`` over [N, in]. Here the scale is applied to
the [out, r] factor, the adapter product is accumulated into the base output in place
(``addmm_``), and the input gradient is accumulated the same way; the frozen base weight gets no
gradient. Same values up to float round-off (bit-identical products when ``s`` is a power of 2).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from tune.peft.dense_weight import is_tensor_subclass


def can_fuse_lora(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
) -> bool:
    """Whether ``lora_linear`` applies: plain tensors of one dtype, frozen base weight and bias.

    Args:
        x: [..., in] input.
        weight: [out, in] base weight.
        bias: [out] base bias or None.
        lora_a: [r, in] adapter down-projection.
        lora_b: [out, r] adapter up-projection.
    """
    tensors = [x, weight, lora_a, lora_b] + ([bias] if bias is not None else [])
    if any(is_tensor_subclass(t) for t in tensors):
        return False
    if weight.requires_grad or (bias is not None and bias.requires_grad):
        return False
    return all(t.dtype == x.dtype and t.device == x.device for t in tensors)


class _LoRALinear(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scaling: float,
    ) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])  # (N, in)
        down = flat @ lora_a.t()  # (N, r)
        out = F.linear(flat, weight, bias)  # (N, out)
        out.addmm_(down, (lora_b * scaling).t())
        ctx.save_for_backward(x, down, weight, lora_a, lora_b)
        ctx.scaling = scaling
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, down, weight, lora_a, lora_b = ctx.saved_tensors
        scaling = ctx.scaling
        grad = grad_out.reshape(-1, grad_out.shape[-1])  # (N, out)
        grad_down = grad @ (lora_b * scaling)  # (N, r)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad_down @ lora_a).addmm_(grad, weight).view(x.shape)  # (..., in)
        grad_a = None
        if ctx.needs_input_grad[3]:
            grad_a = grad_down.t() @ x.reshape(-1, x.shape[-1])  # (r, in)
        grad_b = (grad.t() @ down) * scaling if ctx.needs_input_grad[4] else None  # (out, r)
        return grad_x, None, None, grad_a, grad_b, None


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """``F.linear(x, weight, bias) + scaling * (x @ lora_a.T) @ lora_b.T`` with a frozen base.

    Check ``can_fuse_lora`` first.

    Args:
        x: [..., in] input.
        weight: [out, in] frozen base weight.
        bias: [out] frozen bias or None.
        lora_a: [r, in] adapter down-projection.
        lora_b: [out, r] adapter up-projection.
        scaling: the adapter scale ``alpha / r``.

    Returns:
        [..., out].
    """
    return _LoRALinear.apply(x, weight, bias, lora_a, lora_b, scaling)
