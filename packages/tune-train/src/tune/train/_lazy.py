"""Lazy package attributes (PEP 562): an exported name imports its module on first use.

So ``import tune.train.loggers.redaction`` (a command line's error path) does not import torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(
    package: str, namespace: dict[str, Any], exports: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of a package whose ``__init__`` imports lazily.

    Args:
        package: the package's ``__name__``.
        namespace: its ``globals()``; a name is cached there once imported.
        exports: submodule (relative to ``package``) -> the names it exports. Accessing a
            submodule's own name imports the submodule.
    """
    owner = {name: module for module, names in exports.items() for name in names}

    def module_getattr(name: str) -> Any:
        if name in owner:
            value = getattr(importlib.import_module(f"{package}.{owner[name]}"), name)
        elif name in exports:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def module_dir() -> list[str]:
        return sorted({*namespace, *owner, *exports})

    return module_getattr, module_dir
