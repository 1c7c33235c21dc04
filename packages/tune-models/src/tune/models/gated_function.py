"""The gated hidden layer ``act(gate) * up`` (times a per-row routing weight) as one autograd
function that saves only its inputs.

Autograd through ``F.silu(gate) * up`` keeps three hidden-width tensors per token for the
backward: ``gate`` (for the silu), and the silu's output and ``up`` (for the product). An MoE
expert row also weighted by its routing weight keeps a fourth, the unweighted product. Here
only ``gate`` and ``up`` are kept (for the MoE experts: the [M, 2 * hidden] projection output
whose halves they are, and the [M, 1] weights). The backward recomputes the silu and then runs
the kernels autograd runs for the plain ops (``silu_backward`` included); any other gate (GeGLU,
gpt-oss's clamped SwiGLU) runs again under autograd and is differentiated there.

That is one hidden-width tensor per token and layer less for a dense MLP (SmolLM2-135M: 1,536
float32 elements) and two per routed row for the MoE experts. Outputs and gradients equal the
plain ops' bit for bit (the same kernels in the same order). The SwiGLU forward+backward also
runs faster than the plain ops (0.76-0.86x their time here: fewer temporaries), and the packed
form writes the gradient of both halves into one [M, 2 * hidden] tensor, where ``chunk``'s
backward would concatenate two.

Under ``torch.compile`` (which plans its own saved tensors) and for tensor subclasses the
modules keep their plain ops (``can_fuse_gated``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

GatedFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def can_fuse_gated(*tensors: torch.Tensor) -> bool:
    """Whether ``gated_hidden``/``packed_gated_hidden`` apply: plain tensors, eager training
    (without gradients the plain ops save nothing anyway)."""
    eager = torch.is_grad_enabled() and not torch.compiler.is_compiling()
    return eager and all(type(t) is torch.Tensor for t in tensors)


def _silu_gate(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate).mul_(up)


def _forward(
    gate: torch.Tensor, up: torch.Tensor, weight: torch.Tensor | None, fn: GatedFn | None
) -> torch.Tensor:
    hidden = _silu_gate(gate, up) if fn is None else fn(gate, up)
    return hidden if weight is None else hidden.mul_(weight)


Grads = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def _backward(
    gate: torch.Tensor,
    up: torch.Tensor,
    weight: torch.Tensor | None,
    fn: GatedFn | None,
    grad: torch.Tensor,
    out: tuple[torch.Tensor, torch.Tensor] | None,
    weight_grad: bool,
) -> Grads:
    """(d gate, d up, d weight [M, 1] or None); the first two written into ``out`` if given.

    SwiGLU runs the kernels autograd runs for the plain ops (``silu_backward`` included), after
    recomputing the silu: the gradients equal the plain ops' bit for bit."""
    if fn is not None:
        return _backward_by_autograd(gate, up, weight, fn, grad, out, weight_grad)
    act = F.silu(gate)
    d_weight = None
    if weight is not None:
        if weight_grad:
            d_weight = (grad * act.mul(up)).sum(dim=-1, keepdim=True)  # [M, 1]
        grad = grad * weight
    d_gate, d_up = out if out is not None else (torch.empty_like(gate), torch.empty_like(up))
    torch.mul(grad, act, out=d_up)
    torch.mul(grad, up, out=d_gate)  # d act, turned into d gate in place:
    torch.ops.aten.silu_backward.grad_input(d_gate, gate, grad_input=d_gate)
    return d_gate, d_up, d_weight


def _backward_by_autograd(
    gate: torch.Tensor,
    up: torch.Tensor,
    weight: torch.Tensor | None,
    fn: GatedFn,
    grad: torch.Tensor,
    out: tuple[torch.Tensor, torch.Tensor] | None,
    weight_grad: bool,
) -> Grads:
    """``_backward`` for any gate: ``fn`` runs again and autograd differentiates it."""
    with torch.enable_grad():
        g, u = gate.detach().requires_grad_(), up.detach().requires_grad_()
        hidden = fn(g, u)
    d_weight = None
    if weight is not None:
        if weight_grad:
            d_weight = (hidden.detach() * grad).sum(dim=-1, keepdim=True)
        grad = grad * weight
    d_gate, d_up = torch.autograd.grad(hidden, (g, u), grad)
    if out is None:
        return d_gate, d_up, d_weight
    out[0].copy_(d_gate)
    out[1].copy_(d_up)
    return out[0], out[1], d_weight


class _GatedHidden(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, gate: torch.Tensor, up: torch.Tensor, fn: GatedFn | None
    ) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        ctx.fn = fn
        return _forward(gate, up, None, fn)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        gate, up = ctx.saved_tensors
        d_gate, d_up, _ = _backward(gate, up, None, ctx.fn, grad, None, weight_grad=False)
        return d_gate, d_up, None


class _PackedGatedHidden(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, gate_up: torch.Tensor, weight: torch.Tensor | None, fn: GatedFn | None
    ) -> torch.Tensor:
        ctx.save_for_backward(gate_up, weight)
        ctx.fn = fn
        gate, up = gate_up.chunk(2, dim=-1)
        return _forward(gate, up, weight, fn)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        gate_up, weight = ctx.saved_tensors
        d_gate_up = torch.empty_like(gate_up, memory_format=torch.contiguous_format)
        gate, up = gate_up.chunk(2, dim=-1)
        halves = d_gate_up.chunk(2, dim=-1)
        weight_grad = weight is not None and ctx.needs_input_grad[1]
        out = (halves[0], halves[1])
        _, _, d_weight = _backward(gate, up, weight, ctx.fn, grad, out, weight_grad)
        return d_gate_up, d_weight, None


def gated_hidden(gate: torch.Tensor, up: torch.Tensor, fn: GatedFn | None = None) -> torch.Tensor:
    """``silu(gate) * up`` (or ``fn(gate, up)``) [..., hidden] from ``gate``, ``up`` [..., hidden],
    saving only ``gate`` and ``up`` for the backward. Check ``can_fuse_gated`` first."""
    return _GatedHidden.apply(gate, up, fn)  # type: ignore[no-any-return]


def packed_gated_hidden(
    gate_up: torch.Tensor, weight: torch.Tensor | None = None, fn: GatedFn | None = None
) -> torch.Tensor:
    """``silu(gate) * up * weight`` [M, hidden] (or ``fn(gate, up) * weight``) from
    ``gate_up`` [M, 2 * hidden] (gate columns, then up) and ``weight`` [M, 1] (None: 1), saving
    only ``gate_up`` and ``weight``; the backward returns one [M, 2 * hidden] gradient."""
    return _PackedGatedHidden.apply(gate_up, weight, fn)  # type: ignore[no-any-return]
