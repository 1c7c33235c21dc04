"""Optimizer and LR schedule from registry names (the building is ``tune.train.optimizers``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from tune.recipes.config.registries import LR_SCHEDULES, OPTIMIZERS
from tune.train.optimizers import Implementation
from tune.train.optimizers import build_optimizer as _build_optimizer
from tune.train.optimizers import build_schedule as _build_schedule

# The config's ``betas`` and ``eps`` go to these names only (other optimizers keep their own).
ADAM_FAMILY = ("adamw", "adam", "adamw8bit")


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
    """The ``tune.optimizers`` optimizer ``name`` over ``params`` (``tune.train.build_optimizer``)."""
    options = {"lr": lr, "weight_decay": weight_decay, **kwargs}
    if name in ADAM_FAMILY:
        options.update(betas=tuple(betas), eps=eps)
    cls = OPTIMIZERS.load(name, allow_imports)
    try:
        return _build_optimizer(cls, params, implementation=implementation, **options)
    except ValueError as err:  # name the config section the values came from
        raise ValueError(f"training.optimizer: {err}") from err


def build_schedule(
    optimizer: torch.optim.Optimizer,
    name: str,
    *,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float,
    allow_imports: Sequence[str] = (),
) -> torch.optim.lr_scheduler.LRScheduler:
    """The ``tune.lr_schedules`` schedule ``name`` (``tune.train.build_schedule``)."""
    factory = LR_SCHEDULES.load(name, allow_imports)
    return _build_schedule(
        factory, optimizer, warmup_steps=warmup_steps, total_steps=total_steps,
        min_lr_ratio=min_lr_ratio,
    )  # fmt: skip
