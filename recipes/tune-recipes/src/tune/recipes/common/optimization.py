"""Optimizer and learning-rate schedule from registry names."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from tune.recipes.config.registries import LR_SCHEDULES, OPTIMIZERS


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
) -> torch.optim.Optimizer:
    """An optimizer from the ``tune.optimizers`` registry over the trainable ``params``."""
    cls = OPTIMIZERS.load(name, allow_imports)
    options: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay, **kwargs}
    if name in ("adamw", "adam", "adamw8bit"):
        options.update(betas=tuple(betas), eps=eps)
    return cls(list(params), **options)


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
