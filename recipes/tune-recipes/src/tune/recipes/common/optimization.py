"""Optimizer and learning-rate schedule from registry names."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from torch.distributed.tensor import DTensor

from tune.recipes.config.registries import LR_SCHEDULES, OPTIMIZERS

Implementation = Literal["auto", "fused", "foreach", "for_loop"]
_KERNEL_DEVICES = ("cpu", "cuda")


def _is_dense_float(param: torch.Tensor) -> bool:
    """A float tensor on CPU/CUDA, plain or an FSDP2/TP ``DTensor`` (no other subclass)."""
    plain = type(param.data) is torch.Tensor or isinstance(param, DTensor)
    return plain and param.is_floating_point() and param.device.type in _KERNEL_DEVICES


def implementation_options(
    cls: type, params: Sequence[torch.Tensor], implementation: Implementation
) -> dict[str, bool]:
    """The ``fused`` / ``foreach`` keyword arguments that select ``implementation`` for ``cls``.

    ``auto`` picks the fused kernel when ``cls`` has one and every parameter is a dense float
    tensor on CPU/CUDA (plain or DTensor), else the multi-tensor (foreach) kernels when ``cls``
    has them, else the optimizer's own default. torch's own default on CPU is the per-parameter
    for-loop, several times slower than the fused kernel for AdamW.

    Args:
        cls: the optimizer class.
        params: the trainable parameters it will update.
        implementation: ``auto``, ``fused``, ``foreach`` or ``for_loop``.
    """
    accepted = inspect.signature(cls).parameters
    has_fused, has_foreach = "fused" in accepted, "foreach" in accepted
    if implementation == "auto":
        if has_fused and params and all(_is_dense_float(p) for p in params):
            return {"fused": True}
        return {"foreach": True} if has_foreach and params else {}
    if implementation == "for_loop":
        return {k: False for k, ok in (("fused", has_fused), ("foreach", has_foreach)) if ok}
    if not (has_fused if implementation == "fused" else has_foreach):
        raise ValueError(
            f"training.optimizer.implementation={implementation!r}: {cls.__qualname__} has no "
            f"{implementation!r} argument; use auto or for_loop"
        )
    return {implementation: True}


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    name: str,
    *,
    lr: float,
    weight_decay: float,
    betas: Sequence[float],
    eps: float,
    kwargs: dict[str, Any],
    allow_imports: Sequence[str] = (),
    implementation: Implementation = "auto",
) -> torch.optim.Optimizer:
    """An optimizer from the ``tune.optimizers`` registry over the trainable ``params``.

    Args:
        implementation: the update kernels (see ``implementation_options``); ``kwargs`` that
            set ``fused`` or ``foreach`` themselves are only allowed with ``auto``, and win.
    """
    cls = OPTIMIZERS.load(name, allow_imports)
    params = list(params)
    explicit = sorted({"fused", "foreach"} & kwargs.keys())
    if explicit and implementation != "auto":
        raise ValueError(
            f"training.optimizer.kwargs sets {', '.join(explicit)} and "
            f"training.optimizer.implementation={implementation!r}: set one of them"
        )
    options: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if not explicit:
        options.update(implementation_options(cls, params, implementation))
    options.update(kwargs)
    if name in ("adamw", "adam", "adamw8bit"):
        options.update(betas=tuple(betas), eps=eps)
    return cls(params, **options)


def build_schedule(
    optimizer: torch.optim.Optimizer,
    name: str,
    *,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float,
    allow_imports: Sequence[str] = (),
) -> torch.optim.lr_scheduler.LRScheduler:
    """A schedule from the ``tune.lr_schedules`` registry."""
    factory = LR_SCHEDULES.load(name, allow_imports)
    if name == "constant":
        return factory(optimizer, warmup_steps=warmup_steps)
    if name in ("linear", "cosine"):
        return factory(
            optimizer, warmup_steps=warmup_steps, total_steps=total_steps, min_lr_ratio=min_lr_ratio
        )
    if name == "warmup_stable_decay":
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
