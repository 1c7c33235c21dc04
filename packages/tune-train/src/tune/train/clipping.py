"""Gradient clipping that always reports the total norm before clipping."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor


def clip_grad_norm(
    parameters: Iterable[Tensor] | Tensor,
    max_norm: float | None,
    *,
    norm_type: float = 2.0,
    group: Any = None,
    norm_exclude: Iterable[Tensor] = (),
) -> Tensor:
    """Clip gradients in place to `max_norm` (if given) and return their total norm before clipping.

    Works with plain and DTensor (FSDP2 / TP) gradients; a DTensor norm is returned as a full
    (replicated) local tensor. A non-finite norm is returned as is, never raised on: pass it to
    `NonFiniteGuard`.

    Args:
        parameters: parameters whose `.grad` to clip (those without a gradient are skipped).
        max_norm: maximum total norm; None or `inf` only measures.
        norm_type: p of the p-norm (`inf` for the max norm).
        group: a process group whose ranks hold *other* parameters (pipeline stages): the norm
            is taken over all of them (collective: every rank of the group calls, also one
            without gradients).
        norm_exclude: parameters clipped but left out of the norm (with ``group``): a copy of a
            weight another rank also holds, such as the LM head tied to the first stage's
            embedding, counts once.

    Returns:
        0-d float tensor, the total norm over all gradients.
    """
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    if max_norm is not None and max_norm <= 0:
        raise ValueError(f"max_norm must be positive or None, got {max_norm}")
    if group is not None:
        skip = {id(p) for p in norm_exclude}
        measured = [p.grad for p in params if p.grad is not None and id(p) not in skip]
        return _clip_across_ranks(grads, max_norm, norm_type, group, measured)
    if not grads:
        return torch.zeros(())
    if len({getattr(g, "device_mesh", None) for g in grads}) > 1:
        return _clip_across_meshes(grads, max_norm, norm_type)
    if max_norm is None or max_norm == float("inf"):
        total = torch.nn.utils.get_total_norm(grads, norm_type=norm_type)
    else:
        total = torch.nn.utils.clip_grad_norm_(
            [p for p in params if p.grad is not None], max_norm, norm_type=norm_type
        )
    return _full(total)


def _full(norm: Tensor) -> Tensor:
    full_tensor = getattr(norm, "full_tensor", None)
    return full_tensor() if callable(full_tensor) else norm


def _clip_across_meshes(grads: list[Tensor], max_norm: float | None, norm_type: float) -> Tensor:
    """DTensor gradients on several meshes (FSDP + TP with modules left out of the TP plan):
    one norm per mesh, made full, combined; clipping then scales every gradient locally."""
    by_mesh: dict[object, list[Tensor]] = {}
    for grad in grads:
        by_mesh.setdefault(getattr(grad, "device_mesh", None), []).append(grad)
    norms = [_full(torch.nn.utils.get_total_norm(g, norm_type=norm_type)) for g in by_mesh.values()]
    total = torch.nn.utils.get_total_norm(norms, norm_type=norm_type)
    if max_norm is not None and max_norm != float("inf"):
        coef = float(torch.clamp(max_norm / (total + 1e-6), max=1.0))
        for grad in grads:
            grad.mul_(coef)
    return total


def _clip_across_ranks(
    grads: list[Tensor], max_norm: float | None, norm_type: float, group: Any,
    measured: list[Tensor],
) -> Tensor:  # fmt: skip
    """One norm over gradients spread across ``group``'s ranks: the local norm of ``measured``
    (per mesh, made full) to the p-th power summed over the group (max for the inf-norm), then
    ``grads`` scaled locally."""
    import torch.distributed as dist

    local = _clip_across_meshes(measured, None, norm_type) if measured else torch.zeros(())
    local = local.detach().float().reshape(())
    if norm_type == float("inf"):
        dist.all_reduce(local, op=dist.ReduceOp.MAX, group=group)
        total = local
    else:
        power = local.pow(norm_type)
        dist.all_reduce(power, group=group)
        total = power.pow(1.0 / norm_type)
    if max_norm is not None and max_norm != float("inf"):
        coef = float(torch.clamp(max_norm / (total + 1e-6), max=1.0))
        for grad in grads:
            grad.mul_(coef)
    return total
