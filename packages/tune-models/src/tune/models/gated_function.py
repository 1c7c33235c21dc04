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
backward would concatenate two. On the CPU the packed (MoE) form runs in row blocks that stay
in cache from one op to the next (``BLOCK_ELEMENTS``): 1.2-1.35x faster than one pass for a
quarter-width Qwen3-MoE block's [8192-16384, 2 * 192] rows, 1.7-1.9x for the published
width's [16384, 2 * 768].

Under ``torch.compile`` (which plans its own saved tensors) and for tensor subclasses the
modules keep their plain ops (``can_fuse_gated``).
"""

from __future__ import annotations

import math
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


# The MoE experts' weighted SwiGLU (``packed_gated_hidden``) runs on the CPU in row blocks of
# about this many elements per hidden-width tensor (float32: 768 KiB): every op of the forward
# and of the backward runs block by block, so a block's gate, up, silu and gradient are still in
# the core's cache when the next op reads them, instead of streaming each whole [M, hidden]
# tensor from memory once per op (8 passes in the backward). Measured against one pass, 1
# thread: 1.2-1.35x faster at [8192 and 16384, 2 * 192], 1.24-1.29x at [4096, 2 * 768],
# 1.7-1.9x at [16384, 2 * 768]; 0.88-1.17x (noise) at [2048 and 4096, 2 * 192], hence
# ``MIN_BLOCKED_ELEMENTS``. The dense ``gated_hidden`` keeps one pass: at [M, 1536] blocks read
# 0.75-1.35x, no steady gain. Other devices run one pass too (a kernel launch per op and block
# would cost more than it saves).
BLOCK_ELEMENTS = 3 << 16
MIN_BLOCKED_ELEMENTS = 1 << 20  # below this many elements per hidden tensor, one pass
# Each block but the last holds a multiple of this many elements. torch's CPU kernels run the
# silu's exp in vector lanes (up to 2 x 16 float32 per step with AVX-512) and the elements past
# the last full step of a contiguous run in scalar code, whose last bit can differ; with whole
# steps per block the same elements take the scalar code as in one pass over the tensor, so
# the results equal the unblocked ops' bit for bit.
_BLOCK_ALIGN = 64


def row_blocks(rows: int, width: int, device: torch.device | None = None) -> list[slice]:
    """Row slices of ``rows`` rows covering about ``BLOCK_ELEMENTS`` elements of width ``width``
    each (a multiple of ``_BLOCK_ALIGN`` elements, but for the last); one slice off the CPU or
    below ``MIN_BLOCKED_ELEMENTS``."""
    if (device is not None and device.type != "cpu") or rows * width < MIN_BLOCKED_ELEMENTS:
        return [slice(0, rows)]
    width = max(width, 1)
    align = _BLOCK_ALIGN // math.gcd(width, _BLOCK_ALIGN)  # rows per whole number of steps
    step = max(align, BLOCK_ELEMENTS // width // align * align)
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def _blocks(rows: torch.Tensor, blocked: bool) -> list[slice]:
    """The row blocks of the 2-D ``rows`` to run (one unless ``blocked``)."""
    if not blocked:
        return [slice(0, rows.shape[0])]
    return row_blocks(rows.shape[0], rows.shape[1], rows.device)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """[..., width] -> [R, width] (a view where the layout allows: read-only use)."""
    return t.reshape(-1, t.shape[-1])


def _row_view(t: torch.Tensor) -> torch.Tensor:
    """[..., width] -> [R, width], always a view (written into)."""
    return t.view(-1, t.shape[-1])


def _forward(
    gate: torch.Tensor,
    up: torch.Tensor,
    weight: torch.Tensor | None,
    fn: GatedFn | None,
    blocked: bool = False,
) -> torch.Tensor:
    if fn is not None:
        hidden = fn(gate, up)
        return hidden if weight is None else hidden.mul_(weight)
    out = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)  # silu(gate) * up
    g, u, o = _rows(gate), _rows(up), _row_view(out)
    w = None if weight is None else _rows(weight)
    for r in _blocks(g, blocked):
        torch.ops.aten.silu.out(g[r], out=o[r])
        o[r].mul_(u[r])
        if w is not None:
            o[r].mul_(w[r])
    return out


Grads = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def _backward(
    gate: torch.Tensor,
    up: torch.Tensor,
    weight: torch.Tensor | None,
    fn: GatedFn | None,
    grad: torch.Tensor,
    out: tuple[torch.Tensor, torch.Tensor] | None,
    weight_grad: bool,
    blocked: bool = False,
) -> Grads:
    """(d gate, d up, d weight [M, 1] or None); the first two written into ``out`` if given.

    SwiGLU runs the kernels autograd runs for the plain ops (``silu_backward`` included), after
    recomputing the silu: the gradients equal the plain ops' bit for bit."""
    if fn is not None:
        return _backward_by_autograd(gate, up, weight, fn, grad, out, weight_grad)
    if out is None:
        out = (_empty_rows_like(gate), _empty_rows_like(up))
    d_weight = None
    if weight is not None and weight_grad:
        d_weight = torch.empty(weight.shape, dtype=grad.dtype, device=grad.device)
    g, u, dy = _rows(gate), _rows(up), _rows(grad)
    d_g, d_u = _row_view(out[0]), _row_view(out[1])
    w = None if weight is None else _rows(weight)
    d_w = None if d_weight is None else _row_view(d_weight)
    for r in _blocks(g, blocked):
        _silu_backward_block(
            g[r], u[r], None if w is None else w[r], dy[r], d_g[r], d_u[r],
            None if d_w is None else d_w[r],
        )  # fmt: skip
    return out[0], out[1], d_weight


def _empty_rows_like(t: torch.Tensor) -> torch.Tensor:
    """A contiguous uninitialised tensor shaped like ``t``."""
    return torch.empty(t.shape, dtype=t.dtype, device=t.device)


def _silu_backward_block(
    gate: torch.Tensor,
    up: torch.Tensor,
    weight: torch.Tensor | None,
    grad: torch.Tensor,
    d_gate: torch.Tensor,
    d_up: torch.Tensor,
    d_weight: torch.Tensor | None,
) -> None:
    """One row block of the SwiGLU backward, written into ``d_gate``, ``d_up`` and
    ``d_weight`` [rows, 1] (if given): autograd's kernels for ``silu(gate) * up * weight``."""
    act = F.silu(gate)
    if weight is not None:
        if d_weight is not None:
            torch.sum(grad * act.mul(up), dim=-1, keepdim=True, out=d_weight)
        grad = grad * weight
    torch.mul(grad, act, out=d_up)
    torch.mul(grad, up, out=d_gate)  # d act, turned into d gate in place:
    torch.ops.aten.silu_backward.grad_input(d_gate, gate, grad_input=d_gate)


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
        return _forward(gate, up, weight, fn, blocked=True)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        gate_up, weight = ctx.saved_tensors
        d_gate_up = torch.empty_like(gate_up, memory_format=torch.contiguous_format)
        gate, up = gate_up.chunk(2, dim=-1)
        halves = d_gate_up.chunk(2, dim=-1)
        weight_grad = weight is not None and ctx.needs_input_grad[1]
        out = (halves[0], halves[1])
        _, _, d_weight = _backward(gate, up, weight, ctx.fn, grad, out, weight_grad, blocked=True)
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
