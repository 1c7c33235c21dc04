"""Grouped linear layer for stacked experts on the CPU, with reusable weight-gradient buffers.

``grouped_linear(x, weight, offsets, counts, grad_buffer)`` computes, for rows ``x`` [M, in]
grouped by expert (group ``e`` = rows ``offsets[e-1]:offsets[e]``)::

    y[rows of e] = x[rows of e] @ weight[e].T          # weight [E, out, in], y [M, out]

like ``torch._grouped_mm(x, weight.transpose(-2, -1), offs=offsets)``, which it calls for the
forward and the input gradient. Its own part is the weight gradient, ``dW[e] = dy_e.T @ x_e``,
written expert by expert into a buffer that outlives the step.

Why: on the CPU a fresh allocation above glibc's mmap threshold (32 MiB at most) is mapped anew
and the kernel faults in and zeroes every 4 KiB page on first touch. A stacked expert gradient is
such an allocation every step: filling a fresh 151 MB tensor took 61 ms here against 7 ms for
refilling one already mapped, a third of a Qwen3-MoE-shaped block's forward+backward at 128
tokens. torch's CUDA caching allocator has no such cost, so only the CPU takes this path.

How the buffer is reused without copies or aliasing (``GradBuffers``): the backward writes into a
fresh view of the cached storage and returns it as the weight's gradient. When the parameter has
no ``.grad`` yet, autograd's ``AccumulateGrad`` adopts that tensor as ``.grad`` (no clone: nothing
else references the view); otherwise it adds it into the existing ``.grad``. The next forward
reuses the storage only if nothing else holds it any more (``zero_grad(set_to_none=True)``, the
torch default, dropped ``.grad``; a caller that kept a reference, ``torch.autograd.grad`` or a
second use of the weight in the same step all keep it held): then the backward takes a fresh
tensor, exactly as without the cache. So results, hooks and ``autograd.grad`` are unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch


def _storage_refs(tensor: torch.Tensor) -> int:
    """References to ``tensor``'s storage, not counting the temporary Python storage object."""
    return int(torch._C._storage_Use_Count(tensor.untyped_storage()._cdata)) - 1


_REUSABLE = hasattr(torch._C, "_storage_Use_Count")

# Above glibc's largest mmap threshold (32 MiB on 64-bit) every [N*k, dim] intermediate is a fresh
# mapping each step, so the MoE block's CPU path gathers and sums rows inside its expert loops
# instead (``gather_grouped_linear``, ``grouped_linear_scatter_add``). Below it the heap reuses
# those tensors, and the per-expert gathers cost more than they save (at 128 and 512 tokens of
# the Qwen3-MoE-shaped benchmark block: 1.05x slower; at 2048: 1.12x faster).
FUSED_MIN_BYTES = 32 << 20


class GradBuffers:
    """Per-parameter weight-gradient buffers kept across steps (see the module docstring)."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def claim(self, name: str, weight: torch.Tensor) -> torch.Tensor | None:
        """A writable tensor shaped like ``weight`` whose storage nobody else holds, or None
        (then the backward allocates as usual)."""
        if not _REUSABLE:
            return None
        buffer = self._buffers.get(name)
        if (
            buffer is None
            or buffer.shape != weight.shape
            or buffer.dtype != weight.dtype
            or buffer.device != weight.device
        ):
            buffer = self._buffers[name] = torch.empty_like(
                weight, memory_format=torch.contiguous_format
            )
        elif _storage_refs(buffer) != 1:
            return None  # still someone's .grad (accumulation, a kept reference, autograd.grad)
        return buffer.view(buffer.shape)  # a new tensor on the same storage, owned by the graph

    def __deepcopy__(self, memo: dict[int, object]) -> GradBuffers:
        return GradBuffers()  # a copied module (a reference model, an EMA) starts without them

    def __getstate__(self) -> dict[str, object]:
        return {"_buffers": {}}

    def clear(self) -> None:
        """Drop the buffers (their memory returns once no ``.grad`` holds it)."""
        self._buffers.clear()


class _GroupedLinear(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        offsets: torch.Tensor,
        counts: list[int],
        grad_buffer: torch.Tensor | None,
    ) -> torch.Tensor:
        _remember(ctx, x, weight, offsets, counts, grad_buffer)
        return torch._grouped_mm(x, weight.transpose(-2, -1), offs=offsets)  # [M, out]

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, offsets = ctx.saved_tensors
        dx = None
        if ctx.needs_input_grad[0]:
            dx = torch._grouped_mm(dy, weight, offs=offsets)  # [M, in]
        dw = _weight_grad(ctx, weight)
        if dw is not None:
            dws, dys, xs = dw.unbind(0), dy.split(ctx.counts), x.split(ctx.counts)
            for e in _experts(ctx.counts, dws):
                torch.mm(dys[e].t(), xs[e], out=dws[e])  # [out, in]
        return dx, dw, None, None, None


class _GatherGroupedLinear(torch.autograd.Function):
    """``x[rows]`` through ``grouped_linear`` without the [M, in] gathered copy."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        rows: torch.Tensor,
        counts: list[int],
        grad_buffer: torch.Tensor | None,
    ) -> torch.Tensor:
        out = x.new_empty(rows.shape[0], weight.shape[1])  # [M, out]
        outs, ws, row_groups = out.split(counts), weight.unbind(0), rows.split(counts)
        for e in _experts(counts):
            torch.mm(x.index_select(0, row_groups[e]), ws[e].t(), out=outs[e])
        _remember(ctx, x, weight, rows, counts, grad_buffer)
        return out

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, rows = ctx.saved_tensors
        dx = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        dw = _weight_grad(ctx, weight)
        dws = None if dw is None else dw.unbind(0)
        douts, ws, row_groups = dout.split(ctx.counts), weight.unbind(0), rows.split(ctx.counts)
        for e in _experts(ctx.counts, dws):
            if dx is not None:
                dx.index_add_(0, row_groups[e], douts[e] @ ws[e])
            if dws is not None:
                torch.mm(douts[e].t(), x.index_select(0, row_groups[e]), out=dws[e])
        return dx, dw, None, None, None


class _GroupedLinearScatterAdd(torch.autograd.Function):
    """``grouped_linear`` whose output rows are summed into ``rows`` of an [N, out] result,
    without the [M, out] per-row output."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        rows: torch.Tensor,
        counts: list[int],
        num_rows: int,
        grad_buffer: torch.Tensor | None,
    ) -> torch.Tensor:
        out = x.new_zeros(num_rows, weight.shape[1])  # [N, out]
        xs, ws, row_groups = x.split(counts), weight.unbind(0), rows.split(counts)
        for e in _experts(counts):
            out.index_add_(0, row_groups[e], xs[e] @ ws[e].t())
        _remember(ctx, x, weight, rows, counts, grad_buffer)
        return out

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, rows = ctx.saved_tensors
        dx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        dw = _weight_grad(ctx, weight)
        dws = None if dw is None else dw.unbind(0)
        dxs = None if dx is None else dx.split(ctx.counts)
        xs, ws, row_groups = x.split(ctx.counts), weight.unbind(0), rows.split(ctx.counts)
        for e in _experts(ctx.counts, dws):
            dy = dout.index_select(0, row_groups[e])  # [count, out]
            if dxs is not None:
                torch.mm(dy, ws[e], out=dxs[e])
            if dws is not None:
                torch.mm(dy.t(), xs[e], out=dws[e])
        return dx, dw, None, None, None, None


def _remember(
    ctx: Any,
    x: torch.Tensor,
    weight: torch.Tensor,
    index: torch.Tensor,
    counts: list[int],
    grad_buffer: torch.Tensor | None,
) -> None:
    """Save what every backward here needs: the input, the weight, the group index (offsets or
    rows), the host counts and the claimed gradient buffer."""
    ctx.save_for_backward(x, weight, index)
    ctx.counts, ctx.grad_buffer = counts, grad_buffer


def _weight_grad(ctx: Any, weight: torch.Tensor) -> torch.Tensor | None:
    """Where the weight gradient goes: the claimed buffer, or a fresh tensor."""
    if not ctx.needs_input_grad[1]:
        return None
    buffer = ctx.grad_buffer if ctx.grad_buffer is not None else torch.empty_like(weight)
    ctx.grad_buffer = None  # the returned tensor must be the only reference to the view
    return buffer


def _experts(counts: list[int], zero_empty: Sequence[torch.Tensor] | None = None) -> Iterator[int]:
    """The experts with rows; zeroes ``zero_empty[e]`` (their gradients) for the rest. The
    loops index per-expert views made once by ``split``/``unbind`` (one C++ call each, where
    slicing per expert would dispatch two or three ops per expert)."""
    for expert, count in enumerate(counts):
        if count:
            yield expert
        elif zero_empty is not None:
            zero_empty[expert].zero_()


def gather_grouped_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    rows: torch.Tensor,
    counts: list[int],
    grad_buffer: torch.Tensor | None = None,
) -> torch.Tensor:
    """``grouped_linear(x[rows], ...)`` [M, out], gathering each expert's rows as it goes.

    Args:
        x: [N, in] tokens.
        rows: [M] int64 token of each grouped row (grouped by expert, ``counts`` per expert).
        weight, counts, grad_buffer: as for ``grouped_linear``.
    """
    return _GatherGroupedLinear.apply(x, weight, rows, counts, grad_buffer)  # type: ignore[no-any-return]


def grouped_linear_scatter_add(
    x: torch.Tensor,
    weight: torch.Tensor,
    rows: torch.Tensor,
    counts: list[int],
    num_rows: int,
    grad_buffer: torch.Tensor | None = None,
) -> torch.Tensor:
    """``zeros(num_rows, out).index_add(0, rows, grouped_linear(x, ...))`` [N, out], adding each
    expert's output rows as it goes.

    Args:
        x: [M, in] rows grouped by expert.
        rows: [M] int64 target row of each.
        num_rows: ``N``.
        weight, counts, grad_buffer: as for ``grouped_linear``.
    """
    return _GroupedLinearScatterAdd.apply(x, weight, rows, counts, num_rows, grad_buffer)  # type: ignore[no-any-return]


def grouped_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    offsets: torch.Tensor,
    counts: list[int],
    grad_buffer: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rows ``x`` [M, in] grouped by expert times their expert's ``weight`` [E, out, in] -> [M, out].

    Args:
        x: [M, in] rows sorted by expert.
        weight: [E, out, in] stacked expert weights.
        offsets: [E] int32 end row of each expert's group (``cumsum(counts)``).
        counts: the E group sizes on the host (the weight gradient loops over them).
        grad_buffer: from ``GradBuffers.claim``: where the weight gradient is written.
    """
    return _GroupedLinear.apply(x, weight, offsets, counts, grad_buffer)  # type: ignore[no-any-return]


def reusable_grad(weight: torch.Tensor) -> bool:
    """Whether ``weight`` takes the buffered path: a plain CPU leaf that gets a gradient, outside
    ``torch.compile`` (a tensor subclass, a DTensor or a computed weight, such as an expert LoRA
    sum or an expert-parallel shard, keeps ``torch._grouped_mm``'s own backward)."""
    return (
        torch.is_grad_enabled()
        and weight.requires_grad
        and weight.is_leaf
        and weight.device.type == "cpu"
        and is_plain(weight)
        and not torch.compiler.is_compiling()
    )


def is_plain(weight: torch.Tensor) -> bool:
    """A plain tensor or Parameter: not a tensor subclass (NF4, DTensor), whose indexing per
    expert may dequantize or communicate."""
    return type(weight) in (torch.Tensor, torch.nn.Parameter)
