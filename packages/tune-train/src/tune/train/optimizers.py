"""An optimizer with its update kernels chosen once, and an LR schedule sized to the run.

    optimizer = build_optimizer(torch.optim.AdamW, trainable, lr=2e-5, weight_decay=0.0)
    scheduler = build_schedule(cosine_schedule_with_warmup, optimizer, warmup_steps=100,
                               total_steps=10_000, min_lr_ratio=0.1)

Both take the class or factory itself (any ``torch.optim.Optimizer`` class, any schedule
factory), never a name: looking a name up is the caller's business.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from tune.train.schedules import (
    constant_schedule_with_warmup,
    cosine_schedule_with_warmup,
    linear_schedule_with_warmup,
    warmup_stable_decay_schedule,
)

Implementation = Literal["auto", "fused", "foreach", "for_loop"]
_KERNEL_DEVICES = ("cpu", "cuda")


def _is_dense_float(param: torch.Tensor) -> bool:
    """A float tensor on CPU/CUDA, plain or an FSDP2/TP ``DTensor`` (no other subclass)."""
    # No DTensor exists unless torch.distributed.tensor was imported (~0.5 s, not paid here).
    dtensor = sys.modules.get("torch.distributed.tensor")
    plain = type(param.data) is torch.Tensor or (
        dtensor is not None and isinstance(param, dtensor.DTensor)
    )
    return plain and param.is_floating_point() and param.device.type in _KERNEL_DEVICES


def implementation_options(
    cls: Callable[..., Optimizer], params: Sequence[torch.Tensor], implementation: Implementation
) -> dict[str, bool]:
    """The ``fused`` / ``foreach`` keyword arguments that select ``implementation`` for ``cls``.

    ``auto`` picks the fused kernel when ``cls`` has one and every parameter is a dense float
    tensor on CPU/CUDA (plain or DTensor), else the multi-tensor (foreach) kernels when ``cls``
    has them, else the optimizer's own default. torch's own default on CPU is the per-parameter
    for-loop, several times slower than the fused kernel for AdamW.

    Args:
        cls: the optimizer class.
        params: the trainable parameters it will update.
        implementation: ``auto``, ``fused``, ``foreach`` or ``for_loop`` (both off).

    Raises:
        ValueError: ``fused`` or ``foreach`` for a class without that argument.
    """
    accepted = inspect.signature(cls).parameters
    has_fused, has_foreach = "fused" in accepted, "foreach" in accepted
    if implementation == "auto":
        if has_fused and params and all(_is_dense_float(p) for p in params):
            return {"fused": True}
        return {"foreach": True} if has_foreach and params else {}
    if implementation == "for_loop":
        return {k: False for k, ok in (("fused", has_fused), ("foreach", has_foreach)) if ok}
    if implementation not in ("fused", "foreach"):
        raise ValueError(
            f"implementation={implementation!r}: expected auto, fused, foreach or for_loop"
        )
    if not (has_fused if implementation == "fused" else has_foreach):
        name = getattr(cls, "__qualname__", repr(cls))
        raise ValueError(
            f"implementation={implementation!r}: {name} has no {implementation!r} argument; "
            "use auto or for_loop"
        )
    return {implementation: True}


def build_optimizer(
    cls: Callable[..., Optimizer],
    params: Iterable[torch.Tensor],
    *,
    implementation: Implementation = "auto",
    **options: Any,
) -> Optimizer:
    """``cls(params, **options)`` with the update kernels that ``implementation`` selects.

    Args:
        cls: the optimizer class (``torch.optim.AdamW``, ``torchao.optim.AdamW8bit``, ...).
        params: the trainable parameters.
        implementation: the update kernels (see ``implementation_options``). ``options`` that
            set ``fused`` or ``foreach`` themselves are only allowed with ``auto``, and win.
        options: the optimizer's keyword arguments (``lr``, ``weight_decay``, ``betas``, ...).

    Raises:
        ValueError: ``options`` set ``fused``/``foreach`` and ``implementation`` is not auto.
    """
    params = list(params)
    explicit = sorted({"fused", "foreach"} & options.keys())
    if explicit and implementation != "auto":
        raise ValueError(
            f"the optimizer's kwargs set {', '.join(explicit)} and "
            f"implementation={implementation!r}: set one of them"
        )
    if not explicit:
        options = {**implementation_options(cls, params, implementation), **options}
    return cls(params, **options)


def build_schedule(
    factory: Callable[..., LRScheduler],
    optimizer: Optimizer,
    *,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.0,
) -> LRScheduler:
    """An LR schedule over a run of ``total_steps`` optimizer steps.

    The schedules of ``tune.train.schedules`` get the arguments they take:
    ``constant_schedule_with_warmup`` only ``warmup_steps``; ``linear_``/``cosine_schedule_with_
    warmup`` also ``total_steps`` and ``min_lr_ratio``; ``warmup_stable_decay_schedule`` decays
    over the last 20% of the steps after warmup (at least one). Any other factory is called as
    ``factory(optimizer, warmup_steps=..., total_steps=...)``.

    Args:
        factory: a schedule factory.
        optimizer: the optimizer whose groups' ``lr`` is the peak rate.
        warmup_steps: steps of linear warmup.
        total_steps: the run's optimizer steps.
        min_lr_ratio: the final rate as a fraction of the peak (decaying schedules).
    """
    if factory is constant_schedule_with_warmup:
        return factory(optimizer, warmup_steps=warmup_steps)
    if factory in (linear_schedule_with_warmup, cosine_schedule_with_warmup):
        return factory(
            optimizer, warmup_steps=warmup_steps, total_steps=total_steps, min_lr_ratio=min_lr_ratio
        )
    if factory is warmup_stable_decay_schedule:
        # The last 20% of the steps decay (the split the WSD papers use by default).
        decay = max(1, (total_steps - warmup_steps) // 5)
        return factory(
            optimizer,
            warmup_steps=warmup_steps,
            stable_steps=total_steps - warmup_steps - decay,
            decay_steps=decay,
            min_lr_ratio=min_lr_ratio,
        )
    return factory(optimizer, warmup_steps=warmup_steps, total_steps=total_steps)
