"""Activation checkpointing applied to blocks by pattern, keeping module names unchanged."""

from __future__ import annotations

import logging
from typing import Any

from torch import nn
from torch.utils.checkpoint import checkpoint

from tune.dist.module_matching import ModuleMatch, describe, find_modules

logger = logging.getLogger(__name__)

_CHECKPOINTED_CLASSES: dict[type, type] = {}


class CheckpointedModule:
    """Marker base of the classes that ``apply_activation_checkpointing`` swaps in."""


def _checkpointed_class(cls: type) -> type:
    """A subclass of ``cls`` whose forward recomputes itself in backward (cached per class)."""
    if cls in _CHECKPOINTED_CLASSES:
        return _CHECKPOINTED_CLASSES[cls]

    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        parent_forward = super(new_cls, self).forward  # type: ignore[arg-type,misc]
        return checkpoint(parent_forward, *args, use_reentrant=False, **kwargs)

    new_cls = type(f"Checkpointed{cls.__name__}", (CheckpointedModule, cls), {"forward": forward})
    _CHECKPOINTED_CLASSES[cls] = new_cls
    return new_cls


def apply_activation_checkpointing(
    model: nn.Module, block_match: ModuleMatch, *, every_n: int = 1
) -> list[str]:
    """Recompute the activations of matched blocks in backward instead of storing them.

    The block's class is swapped for a subclass whose forward runs under non-reentrant
    ``torch.utils.checkpoint``; parameter names and state-dict keys do not change, so LoRA
    targets, TP plans and checkpoints keep working. Apply before FSDP.

    Args:
        model: the model, modified in place.
        block_match: class, tuple of classes, name pattern (``"layers.*"``) or predicate.
        every_n: checkpoint every n-th matched block (1 = all; 2 = blocks 0, 2, 4, ...).

    Returns:
        The names of the checkpointed blocks.
    """
    if every_n < 1:
        raise ValueError(f"every_n must be >= 1, got {every_n}")
    blocks = find_modules(model, block_match)
    if not blocks:
        raise ValueError(
            f"block_match {describe(block_match)} matched no submodule of {type(model).__name__}"
        )
    chosen = []
    for index, (name, block) in enumerate(blocks):
        if index % every_n:
            continue
        if isinstance(block, CheckpointedModule):
            raise ValueError(f"{name} is already checkpointed")
        block.__class__ = _checkpointed_class(type(block))
        chosen.append(name)
    logger.debug("activation checkpointing on %d of %d blocks", len(chosen), len(blocks))
    return chosen
