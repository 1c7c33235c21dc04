"""Choosing which Linear modules to convert, by module-name (FQN) patterns or a callable."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence

from torch import nn

__all__ = ["ADAPTER_PATTERNS", "ModuleFilter", "select_linear_modules"]

# A callable filter receives the module and its fully qualified name.
ModuleFilter = Sequence[str] | Callable[[nn.Module, str], bool] | None

# LoRA/DoRA adapter matrices (PEFT naming) are never quantized: they are the trained part.
ADAPTER_PATTERNS: tuple[str, ...] = ("*lora_A", "*lora_B", "*lora_A.*", "*lora_B.*")


def _matches(fqn: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(fqn, p) for p in patterns)


def select_linear_modules(
    model: nn.Module,
    include: ModuleFilter = None,
    exclude: Sequence[str] = (),
) -> list[str]:
    """Return the FQNs of the ``nn.Linear`` modules (subclasses too) to convert, in model order.

    Args:
        model: the model to search.
        include: ``None`` for every Linear; a sequence of ``fnmatch`` patterns on the FQN
            (``"layers.*.mlp.*"``; ``*`` also matches dots); or a callable ``(module, fqn) -> bool``.
        exclude: ``fnmatch`` patterns removed after ``include``; adapter matrices
            (``ADAPTER_PATTERNS``) are always excluded.

    Raises:
        ValueError: a pattern in ``include`` matched no Linear module (a typo would silently
            quantize nothing otherwise).
    """
    if isinstance(include, str):
        raise TypeError(f"include must be a sequence of patterns, got the string {include!r}")
    excluded = (*ADAPTER_PATTERNS, *exclude)
    linears = [
        (fqn, m) for fqn, m in model.named_modules() if isinstance(m, nn.Linear) and fqn != ""
    ]
    if include is None:
        chosen = [fqn for fqn, _ in linears]
    elif callable(include):
        chosen = [fqn for fqn, m in linears if include(m, fqn)]
    else:
        patterns = list(include)
        unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(f, p) for f, _ in linears)]
        if unmatched:
            names = [f for f, _ in linears]
            raise ValueError(
                f"include patterns {unmatched} match no nn.Linear module; "
                f"Linear modules are {names[:8]}{' ...' if len(names) > 8 else ''}"
            )
        chosen = [fqn for fqn, _ in linears if _matches(fqn, patterns)]
    return [fqn for fqn in chosen if not _matches(fqn, excluded)]
