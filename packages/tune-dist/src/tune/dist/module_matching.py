"""Selecting submodules by class, by module-name pattern, or by predicate."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from typing import Union

from torch import nn

# A module selector: a class (or tuple of classes), a name pattern, or a predicate over
# (fully qualified name, module). Name patterns are fnmatch globs ("layers.*") unless they start
# with "re:", in which case the rest is a regular expression matched against the whole name.
ModuleMatch = Union[type, tuple[type, ...], str, Callable[[str, nn.Module], bool]]


def name_matches(pattern: str, name: str) -> bool:
    """Whether a fully qualified module name matches a glob or ``re:`` pattern."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def _predicate(match: ModuleMatch) -> Callable[[str, nn.Module], bool]:
    if isinstance(match, str):
        return lambda name, _module: name_matches(match, name)
    if isinstance(match, type) or (
        isinstance(match, tuple) and all(isinstance(m, type) for m in match)
    ):
        return lambda _name, module: isinstance(module, match)
    if callable(match):
        return match
    raise TypeError(
        f"module selector {match!r} must be a class, a tuple of classes, a name pattern "
        f"(str) or a callable (name, module) -> bool"
    )


def find_modules(
    model: nn.Module, match: ModuleMatch, *, outermost_only: bool = True
) -> list[tuple[str, nn.Module]]:
    """Submodules of ``model`` (never the root) selected by ``match``, in definition order.

    Args:
        model: the module tree to search.
        match: class, tuple of classes, name pattern, or predicate (name, module) -> bool.
        outermost_only: skip matches nested inside an earlier match.

    Returns:
        A list of (fully qualified name, module).
    """
    predicate = _predicate(match)
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not name:
            continue
        if outermost_only and any(name.startswith(prev + ".") for prev, _ in found):
            continue
        if predicate(name, module):
            found.append((name, module))
    return found


def describe(match: ModuleMatch) -> str:
    """A short human-readable form of a selector for error messages."""
    if isinstance(match, type):
        return match.__name__
    if isinstance(match, tuple):
        return "(" + ", ".join(m.__name__ for m in match) + ")"
    if isinstance(match, str):
        return repr(match)
    return getattr(match, "__name__", repr(match))
